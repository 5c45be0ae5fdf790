//! Where secrets come from: the config, files (systemd credentials honoured), the
//! environment, or — for the loopback demo only — a generated file in the data dir.
//!
//! A relative file name is looked up in `$CREDENTIALS_DIRECTORY` first (systemd's
//! `LoadCredential=`), then relative to the working directory. Without any file
//! configured, the credentials `webhook_secret` and `admin_token` are picked up by
//! name. Secret values never reach a log line: only counts and sources do.
//!
//! Webhook secrets come out as [`Key`]s, the secret material as HMAC key bytes; the
//! webhook builds its verifier (`ingest::webhook::signature::Keys`) from them.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::config::{Config, ConfigError};

pub const WEBHOOK_SECRET_ENV: &str = "LAUNCHGUARD_WEBHOOK_SECRET";
pub const ADMIN_TOKEN_ENV: &str = "LAUNCHGUARD_ADMIN_TOKEN";
pub const WEBHOOK_CREDENTIAL: &str = "webhook_secret";
pub const ADMIN_CREDENTIAL: &str = "admin_token";
pub const PRODUCTHUNT_TOKEN_ENV: &str = "LAUNCHGUARD_PRODUCTHUNT_TOKEN";
pub const PRODUCTHUNT_CREDENTIAL: &str = "producthunt_token";
pub const DEMO_SECRET_FILE: &str = "demo-webhook-secret";

/// What the process environment contributes; injected so tests need not mutate it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub webhook_secret: Option<String>,
    pub admin_token: Option<String>,
    pub producthunt_token: Option<String>,
    pub credentials_directory: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            webhook_secret: std::env::var(WEBHOOK_SECRET_ENV).ok(),
            admin_token: std::env::var(ADMIN_TOKEN_ENV).ok(),
            producthunt_token: std::env::var(PRODUCTHUNT_TOKEN_ENV).ok(),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

/// A signing secret turned into HMAC key bytes. Never shown: its `Debug` is redacted.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// `whsec_<base64>` is base64-decoded (the Standard Webhooks convention); any other
    /// string is used as its UTF-8 bytes.
    pub fn parse(secret: &str) -> Result<Key, &'static str> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err("empty secret");
        }
        match secret.strip_prefix("whsec_") {
            Some(b64) => {
                let bytes = B64
                    .decode(b64)
                    .map_err(|_| "starts with whsec_ but the rest is not valid base64")?;
                if bytes.is_empty() {
                    return Err("whsec_ secret decodes to zero bytes");
                }
                Ok(Key(bytes))
            }
            None => Ok(Key(secret.as_bytes().to_vec())),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The webhook keys and where they came from.
#[derive(Debug)]
pub struct WebhookSecrets {
    /// Every configured secret, all accepted (rotation); the first is the one a local
    /// sender signs with.
    pub keys: Vec<Key>,
    /// Human-readable sources, e.g. `"2 from webhook.secrets"`.
    pub sources: Vec<String>,
    /// Set when the demo secret was used (or generated): its path.
    pub demo_file: Option<PathBuf>,
}

/// Resolves every configured webhook secret; all of them are accepted (rotation).
pub fn webhook_secrets(config: &Config, env: &Env) -> Result<WebhookSecrets, ConfigError> {
    let mut keys = Vec::new();
    let mut sources = Vec::new();

    for (i, s) in config.webhook.secrets.iter().enumerate() {
        keys.push(
            Key::parse(s).map_err(|p| {
                ConfigError::invalid(format!("webhook.secrets[{i}]"), p.to_string())
            })?,
        );
    }
    if !config.webhook.secrets.is_empty() {
        sources.push(format!(
            "{} from webhook.secrets",
            config.webhook.secrets.len()
        ));
    }

    let file = match &config.webhook.secret_file {
        Some(f) => Some((locate(f, env), "webhook.secret_file")),
        None => credential(env, WEBHOOK_CREDENTIAL).map(|p| (p, "credential webhook_secret")),
    };
    if let Some((path, key)) = file {
        let lines = read_lines(&path).map_err(|p| ConfigError::invalid(key, p))?;
        for line in &lines {
            keys.push(
                Key::parse(line)
                    .map_err(|p| ConfigError::invalid(key, format!("{}: {p}", path.display())))?,
            );
        }
        sources.push(format!("{} from {}", lines.len(), path.display()));
    }

    if let Some(value) = &env.webhook_secret {
        let lines: Vec<&str> = value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for line in &lines {
            keys.push(Key::parse(line).map_err(|p| ConfigError::invalid(WEBHOOK_SECRET_ENV, p))?);
        }
        sources.push(format!("{} from {WEBHOOK_SECRET_ENV}", lines.len()));
    }

    let mut demo_file = None;
    if keys.is_empty() {
        let s = &config.server;
        if !(s.listen.ip().is_loopback() && s.admin_listen.ip().is_loopback()) {
            return Err(ConfigError::invalid(
                "webhook.secrets",
                format!(
                    "no webhook secret configured while listening on {} / {}; set webhook.secrets, webhook.secret_file or {WEBHOOK_SECRET_ENV} (a generated demo secret is only used on loopback)",
                    s.listen, s.admin_listen
                ),
            ));
        }
        let path = s.data_dir.join(DEMO_SECRET_FILE);
        let secret = demo_secret(&path).map_err(|e| {
            ConfigError::invalid(
                "server.data_dir",
                format!("cannot keep the demo secret in {}: {e}", path.display()),
            )
        })?;
        keys.push(Key::parse(&secret).expect("generated secrets are valid"));
        sources.push(format!("1 demo secret in {}", path.display()));
        demo_file = Some(path);
    }

    Ok(WebhookSecrets {
        keys,
        sources,
        demo_file,
    })
}

/// The admin bearer token, if one is configured. A non-loopback admin listener
/// without one is an error.
pub fn admin_token(config: &Config, env: &Env) -> Result<Option<String>, ConfigError> {
    let token = if let Some(f) = &config.server.admin_token_file {
        let path = locate(f, env);
        Some(first_line(&path).map_err(|p| ConfigError::invalid("server.admin_token_file", p))?)
    } else if let Some(path) = credential(env, ADMIN_CREDENTIAL) {
        Some(first_line(&path).map_err(|p| ConfigError::invalid("credential admin_token", p))?)
    } else {
        env.admin_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
    };
    if let Some(t) = &token {
        if t.len() < 16 {
            return Err(ConfigError::invalid(
                "server.admin_token_file",
                format!("the admin token is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)", t.len()),
            ));
        }
    }
    if token.is_none() && !config.server.admin_listen.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "server.admin_token_file",
            format!(
                "server.admin_listen {} is not loopback, so the admin API needs a bearer token: set server.admin_token_file, the admin_token credential or {ADMIN_TOKEN_ENV}",
                config.server.admin_listen
            ),
        ));
    }
    Ok(token)
}

/// The Product Hunt API token, if one is configured: `producthunt.token`,
/// `producthunt.token_file`, the credential `producthunt_token`, or
/// `LAUNCHGUARD_PRODUCTHUNT_TOKEN`, first found wins.
pub fn producthunt_token(config: &Config, env: &Env) -> Result<Option<String>, ConfigError> {
    let p = &config.producthunt;
    if let Some(t) = &p.token {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(f) = &p.token_file {
        let path = locate(f, env);
        return first_line(&path)
            .map(Some)
            .map_err(|e| ConfigError::invalid("producthunt.token_file", e));
    }
    if let Some(path) = credential(env, PRODUCTHUNT_CREDENTIAL) {
        return first_line(&path)
            .map(Some)
            .map_err(|e| ConfigError::invalid("credential producthunt_token", e));
    }
    Ok(env
        .producthunt_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from))
}

fn locate(path: &Path, env: &Env) -> PathBuf {
    if path.is_relative() {
        if let Some(dir) = &env.credentials_directory {
            let candidate = dir.join(path);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

fn credential(env: &Env, name: &str) -> Option<PathBuf> {
    let path = env.credentials_directory.as_ref()?.join(name);
    path.exists().then_some(path)
}

fn read_lines(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if lines.is_empty() {
        return Err(format!("{} holds no secret", path.display()));
    }
    Ok(lines)
}

fn first_line(path: &Path) -> Result<String, String> {
    Ok(read_lines(path)?.swap_remove(0))
}

/// Reads the demo secret, generating it (mode 0600) on first use.
fn demo_secret(path: &Path) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Ok(line.to_string());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = format!("whsec_{}", B64.encode(bytes));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(path)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = Key::parse("hunter2").unwrap();
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn the_producthunt_token_comes_from_config_file_credential_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let none = producthunt_token(&config(""), &Env::default()).unwrap();
        assert!(none.is_none());
        let env = Env {
            producthunt_token: Some(" from-env \n".into()),
            ..Env::default()
        };
        let t = producthunt_token(&config(""), &env).unwrap();
        assert_eq!(t.as_deref(), Some("from-env"));
        std::fs::write(dir.path().join("producthunt_token"), "from-credential\n").unwrap();
        let env = Env {
            producthunt_token: Some("from-env".into()),
            credentials_directory: Some(dir.path().to_path_buf()),
            ..Env::default()
        };
        let t = producthunt_token(&config(""), &env).unwrap();
        assert_eq!(t.as_deref(), Some("from-credential"));
        std::fs::write(dir.path().join("ph.token"), "from-file\n").unwrap();
        let c = config("[producthunt]\ntoken_file = \"ph.token\"\n");
        assert_eq!(
            producthunt_token(&c, &env).unwrap().as_deref(),
            Some("from-file")
        );
        let c = config("[producthunt]\ntoken = \"from-config\"\n");
        assert_eq!(
            producthunt_token(&c, &env).unwrap().as_deref(),
            Some("from-config")
        );
        let c = config("[producthunt]\ntoken_file = \"/nonexistent/ph.token\"\n");
        let e = producthunt_token(&c, &Env::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("producthunt.token_file:"), "{e}");
    }

    #[test]
    fn all_sources_are_accepted_together() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("webhook_secret"),
            "from-credential\n# comment\n",
        )
        .unwrap();
        let env = Env {
            webhook_secret: Some("from-env".into()),
            credentials_directory: Some(dir.path().to_path_buf()),
            ..Env::default()
        };
        let s = webhook_secrets(
            &config("[webhook]\nsecrets = [\"a\", \"whsec_c2VjcmV0\"]\n"),
            &env,
        )
        .unwrap();
        assert_eq!(s.keys.len(), 4);
        assert!(s.demo_file.is_none());
    }

    #[test]
    fn relative_secret_file_is_found_in_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ph.secret"), "s1\ns2\n").unwrap();
        let env = Env {
            credentials_directory: Some(dir.path().to_path_buf()),
            ..Env::default()
        };
        let s = webhook_secrets(&config("[webhook]\nsecret_file = \"ph.secret\"\n"), &env).unwrap();
        assert_eq!(s.keys.len(), 2);
    }

    #[test]
    fn missing_secret_file_names_the_key() {
        let e = webhook_secrets(
            &config("[webhook]\nsecret_file = \"/nonexistent/x\"\n"),
            &Env::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("webhook.secret_file: cannot read /nonexistent/x"),
            "{e}"
        );
    }

    #[test]
    fn bad_whsec_names_the_index() {
        let e = webhook_secrets(
            &config("[webhook]\nsecrets = [\"ok\", \"whsec_***\"]\n"),
            &Env::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("webhook.secrets[1]:"), "{e}");
    }

    #[test]
    fn demo_secret_only_on_loopback_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[server]\ndata_dir = {:?}\n", dir.path());
        let a = webhook_secrets(&config(&text), &Env::default()).unwrap();
        let b = webhook_secrets(&config(&text), &Env::default()).unwrap();
        assert_eq!(a.keys.len(), 1);
        assert_eq!(a.demo_file, b.demo_file);
        let stored = std::fs::read_to_string(a.demo_file.unwrap()).unwrap();
        assert!(stored.starts_with("whsec_"));

        let public = format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\ndata_dir = {:?}\n",
            dir.path()
        );
        let e = webhook_secrets(&config(&public), &Env::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("webhook.secrets: no webhook secret configured"),
            "{e}"
        );
    }

    #[test]
    fn admin_token_required_off_loopback() {
        let c = config("[server]\nadmin_listen = \"0.0.0.0:9090\"\n");
        let e = admin_token(&c, &Env::default()).unwrap_err().to_string();
        assert!(e.starts_with("server.admin_token_file:"), "{e}");
        let env = Env {
            admin_token: Some("0123456789abcdef0123".into()),
            ..Env::default()
        };
        assert_eq!(
            admin_token(&c, &env).unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        let short = Env {
            admin_token: Some("short".into()),
            ..Env::default()
        };
        assert!(admin_token(&c, &short).is_err());
    }
}
