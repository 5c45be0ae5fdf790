//! What an operator (and a client) writes, parsed once, by one function each: host
//! names and networks, path and cookie-name patterns, URLs. Config validation calls
//! these to name the key of a bad value; the wings call the same functions to build
//! what they run on, so a value that passed validation always builds.

pub mod globs;
pub mod host;
pub mod url;
