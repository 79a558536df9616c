//! Transport security shared by the coordinator and the workers: every RPC carries the run's
//! shared token (checked in constant time), optionally over TLS with rustls (mutual TLS when a
//! CA is given). Health checks stay open so that Kubernetes' gRPC probes work.

// Casts, randomness and comparisons come from bytemuck, getrandom and subtle.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod http;
pub mod logging;
pub mod prom;
pub mod serve;
pub mod signals;
pub mod wire;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

pub use tonic::service::interceptor::InterceptedService;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// The token and TLS files of a process.
#[derive(Clone, Default)]
pub struct Security {
    token: Option<Arc<str>>,
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    identity: Option<Identity>,
    ca: Option<Certificate>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("token", &self.token.is_some()).field("tls", &self.tls.is_some()).finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, NetError> {
    std::fs::read(path).map_err(|source| NetError::Io { path: path.to_path_buf(), source })
}

/// Where a process's secrets come from (flags and environment, resolved by the caller).
#[derive(Debug, Clone, Default)]
pub struct SecurityArgs {
    pub token_file: Option<PathBuf>,
    /// `PEFTRAIN_TOKEN`'s value, if set.
    pub token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
}

/// Fewest characters a shared token may have. A token guards every RPC of a run on a shared
/// cluster, including the one that loads weights into a worker: 16 characters is already far
/// below the 64 of `openssl rand -hex 32` (what docs/deploy.md makes), but rules out the
/// short words people type by hand.
pub const MIN_TOKEN_LEN: usize = 16;

/// Words that mark a token as a stand-in left in a manifest or an example, never a secret.
const PLACEHOLDER_WORDS: [&str; 6] = ["changeme", "change-me", "change_me", "placeholder", "replace-me", "replaceme"];

/// Why a token cannot guard a run, if it cannot: empty, not printable ASCII, shorter than
/// `MIN_TOKEN_LEN`, or a placeholder.
pub fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    if t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!("the token has {} characters, fewer than {MIN_TOKEN_LEN}: make one with `openssl rand -hex 32`", t.len()));
    }
    let lower = t.to_ascii_lowercase();
    if let Some(w) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Err(format!("the token is a placeholder (it contains \"{w}\"): make a real one with `openssl rand -hex 32`"));
    }
    if t.bytes().collect::<std::collections::BTreeSet<u8>>().len() < 4 {
        return Err("the token repeats fewer than 4 distinct characters: make a real one with `openssl rand -hex 32`".into());
    }
    Ok(())
}

impl Security {
    pub fn load(a: &SecurityArgs) -> Result<Security, NetError> {
        let token = match (&a.token_file, &a.token) {
            (Some(p), _) => {
                let t = String::from_utf8(read(p)?).map_err(|_| NetError::Config(format!("{}: the token is not UTF-8", p.display())))?;
                Some(t.trim().to_string())
            }
            (None, Some(t)) => Some(t.trim().to_string()),
            (None, None) => None,
        };
        if let Some(t) = &token {
            let from = a.token_file.as_ref().map_or("PEFTRAIN_TOKEN".to_string(), |p| p.display().to_string());
            check_token(t).map_err(|why| NetError::Config(format!("{from}: {why}")))?;
        }
        let identity = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err(NetError::Config("--tls-cert and --tls-key go together".into())),
        };
        let ca = a.tls_ca.as_deref().map(read).transpose()?.map(Certificate::from_pem);
        let tls = (identity.is_some() || ca.is_some()).then_some(Tls { identity, ca });
        Ok(Security { token: token.map(Arc::from), tls })
    }

    /// A fresh random token (single-node mode hands it to its local workers): 256 bits, hex.
    pub fn random_token() -> Result<String, NetError> {
        let mut b = [0u8; 32];
        // The operating system's CSPRNG (getrandom(2) here), as the `getrandom` crate reaches it.
        getrandom::fill(&mut b).map_err(|e| NetError::Config(format!("no random token: {e}")))?;
        Ok(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn with_token(mut self, token: &str) -> Security {
        self.token = Some(Arc::from(token));
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Fails unless a token is configured (every RPC must carry one).
    pub fn require_token(&self, who: &str) -> Result<(), NetError> {
        if self.token.is_none() {
            return Err(NetError::Config(format!("{who} needs the run's shared token: --token-file FILE or PEFTRAIN_TOKEN")));
        }
        Ok(())
    }

    /// The server side of TLS: our certificate, and the CA client certificates must chain to
    /// (mutual TLS) when one is given.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, NetError> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let identity = tls.identity.clone().ok_or_else(|| NetError::Config("serving TLS needs --tls-cert and --tls-key".into()))?;
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.ca {
            cfg = cfg.client_ca_root(ca.clone());
        }
        Ok(Some(cfg))
    }

    /// An endpoint for `addr` (`host:port` or a URL), over TLS when configured, presenting our
    /// certificate as the client identity for mutual TLS.
    pub fn endpoint(&self, addr: &str, connect_timeout: Duration) -> Result<Endpoint, NetError> {
        let hostport = addr.split("://").last().unwrap_or(addr).trim_end_matches('/');
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{hostport}"))
            .map_err(|e| NetError::Config(format!("{addr}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // Gradient and state streams are megabytes: HTTP/2's default 64 KiB windows would
            // make every chunk wait for a window update.
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
        if let Some(tls) = &self.tls {
            let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).trim_matches(['[', ']']);
            let mut cfg = ClientTlsConfig::new().domain_name(host.to_string());
            if let Some(ca) = &tls.ca {
                cfg = cfg.ca_certificate(ca.clone());
            }
            if let Some(id) = &tls.identity {
                cfg = cfg.identity(id.clone());
            }
            ep = ep.tls_config(cfg).map_err(|e| NetError::Config(format!("{addr}: {e}")))?;
        }
        Ok(ep)
    }

    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth(self.token.as_ref().and_then(|t| format!("Bearer {t}").parse().ok()))
    }

    pub fn server_auth(&self) -> ServerAuth {
        ServerAuth(self.token.as_ref().map(|t| Arc::new(digest(t.as_bytes()))))
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Adds `authorization: Bearer <token>` to every outgoing call.
#[derive(Clone)]
pub struct ClientAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Refuses calls without the run's token (UNAUTHENTICATED), comparing SHA-256 digests in
/// constant time so that neither content nor length leaks through timing.
#[derive(Clone)]
pub struct ServerAuth(Option<Arc<[u8; 32]>>);

impl Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(|t| digest(t.as_bytes()));
        match got {
            Some(g) if constant_time_eq(&g, want) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong token")),
            None => Err(Status::unauthenticated("missing token: every peftrain RPC carries the run's shared token")),
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a[..].ct_eq(&b[..]))
}

/// A channel whose calls carry the token.
pub type AuthChannel = InterceptedService<tonic::transport::Channel, ClientAuth>;

/// HTTP/2 flow-control windows for every peftrain connection (servers use them too).
pub const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_tokens_are_refused_at_load() {
        let load = |t: &str| Security::load(&SecurityArgs { token: Some(t.into()), ..Default::default() }).map(|_| ());
        for (bad, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("short-token", "fewer than 16"),
            ("CHANGE-ME-placeholder-token-replace-before-use", "placeholder"),
            ("my-changeme-token-0123", "placeholder"),
            ("aaaaaaaaaaaaaaaaaaaaaaaa", "distinct"),
            ("tab\tinside-a-long-token", "printable"),
        ] {
            let e = load(bad).expect_err(bad).to_string();
            assert!(e.contains("PEFTRAIN_TOKEN") && e.contains(why), "{bad:?}: {e}");
        }
        load(&Security::random_token().unwrap()).unwrap();
        load("0123456789abcdef").unwrap();
        // A directory of this test's own (create_dir fails on one that exists), removed after.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("peftrain-token-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "tooshort\n").unwrap();
        let e = Security::load(&SecurityArgs { token_file: Some(f.clone()), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains(&f.display().to_string()) && e.contains("8 characters"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_checks_the_bearer_token() {
        let s = Security::default().with_token("s3cret");
        let mut server = s.server_auth();
        let mut client = s.client_auth();
        let req = client.call(Request::new(())).unwrap();
        assert!(server.call(req).is_ok());
        assert_eq!(server.call(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut wrong = Security::default().with_token("guess").client_auth();
        let req = wrong.call(Request::new(())).unwrap();
        assert_eq!(server.call(req).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
