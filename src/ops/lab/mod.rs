//! `launchguard lab`: replays a launch against launchguard and a real origin with a
//! stated capacity, and reports what happened (see `model` for the visitors).

pub(crate) mod model;
