//! Connecting to NATS with the auth and TLS options every kiln program shares, the `nats`
//! CLI's contexts filling in what is not given.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ServerAddr};

use crate::error::{Error, Result};

/// Where kiln looks for NATS when neither the options nor a context say.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS: the server and the credentials, as the `nats` CLI takes them. Fields
/// left `None` may be filled in from a `nats` CLI context by [`ConnectOptions::resolve`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Server URL(s), comma-separated (`None`: the context's, else [`DEFAULT_NATS_URL`]).
    pub url: Option<String>,
    /// The `nats` CLI context to read (`None`: the one `nats context select` chose, if any).
    pub context: Option<String>,
    /// Token to authenticate with.
    pub token: Option<String>,
    /// User name for user/password auth (with `password`).
    pub user: Option<String>,
    /// Password for user/password auth (with `user`).
    pub password: Option<String>,
    /// Credentials file (JWT + nkey seed) for decentralised auth.
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed to authenticate with.
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// TLS before the NATS protocol (servers with `handshake_first`).
    pub tls_first: bool,
}

impl ConnectOptions {
    /// Options for the server(s) at `url`, nothing else set.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Fill in what is not set from the `nats` CLI context (named by `context`, else the
    /// selected one, ADR-21), as `nats` does: set fields override the context's. A named
    /// context that does not exist, or one using what kiln does not support, is an error.
    pub fn resolve(mut self) -> Result<Self> {
        use crate::context::{given, path};
        if let Some((_, c)) = crate::context::load(self.context.as_deref())? {
            // A URL given with its own credentials (`nats://user:pass@host`) is used with
            // them, as nats.go uses them: not with the context's user, password or token.
            let own = self.url.as_deref().is_some_and(has_credentials);
            self.url = self.url.take().or_else(|| given(&c.url));
            let context = |value: &String| given(value).filter(|_| !own);
            self.token = self.token.take().or_else(|| context(&c.token));
            self.user = self.user.take().or_else(|| context(&c.user));
            self.password = self.password.take().or_else(|| context(&c.password));
            self.creds = self.creds.take().or_else(|| path(&c.creds));
            self.nkey = self.nkey.take().or_else(|| path(&c.nkey));
            self.tls_ca = self.tls_ca.take().or_else(|| path(&c.ca));
            self.tls_cert = self.tls_cert.take().or_else(|| path(&c.cert));
            self.tls_key = self.tls_key.take().or_else(|| path(&c.key));
            self.tls_first |= c.tls_first;
        }
        Ok(self)
    }

    /// The server URL(s) these options connect to.
    pub fn server_url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_NATS_URL)
    }
}

/// Whether any of the comma-separated `urls` carries credentials (`user:pass@`, `token@`).
fn has_credentials(urls: &str) -> bool {
    urls.split(',').any(|url| {
        let rest = url.trim().split_once("://").map_or(url, |(_, rest)| rest);
        rest.split('/')
            .next()
            .is_some_and(|authority| authority.contains('@'))
    })
}

/// Connect once: the first failure is returned (one-shot commands, probing). Refused
/// credentials and TLS failures say which options to check.
pub async fn connect(options: &ConnectOptions) -> Result<async_nats::Client> {
    connect_with(options, false).await
}

/// [`connect`], then make sure the server offers JetStream, where kiln keeps its jobs and
/// results: a server started without it (`nats-server` without `-js`) is named at once, as
/// such, rather than after a minute of retries or as streams to create with `kiln init`.
/// (A server whose INFO says it runs without JetStream may still reach JetStream elsewhere in
/// its cluster: only when the JetStream API has no responders is that an error.)
pub async fn connect_to_jetstream(options: &ConnectOptions) -> Result<async_nats::Client> {
    let client = connect(options).await?;
    let info = client.server_info();
    if info.jetstream {
        return Ok(client);
    }
    let js = async_nats::jetstream::new(client.clone());
    match js.query_account().await {
        Err(e)
            if e.kind()
                == async_nats::jetstream::context::AccountErrorKind::JetStreamUnavailable =>
        {
            Err(Error::Connect {
                message: format!(
                    "the NATS server at {} (nats-server {}) runs without JetStream, where kiln \
                     keeps its jobs and results, and no JetStream server answered through it: \
                     start it with -js (`nats-server -js`), or add `jetstream {{}}` to its \
                     configuration",
                    redacted(options.server_url()),
                    info.version
                ),
                source: None,
            })
        }
        _ => Ok(client),
    }
}

/// Connect, and when the server is not up yet keep trying in the background until it answers
/// (services: their first requests would only time out). Refused credentials and TLS failures
/// are returned at once.
pub async fn connect_and_wait(options: &ConnectOptions) -> Result<async_nats::Client> {
    connect_with(options, true).await
}

/// What follows a server URL that does not parse (after where it came from).
pub const NOT_A_NATS_URL: &str =
    "is not a NATS URL: give nats://host:port, comma-separated for several servers";

/// The servers of a comma-separated list of URLs, or the first that does not parse (its
/// credentials hidden) with why.
pub fn server_addrs(url: &str) -> std::result::Result<Vec<ServerAddr>, (String, std::io::Error)> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| (redacted(s), e)))
        .collect()
}

async fn connect_with(args: &ConnectOptions, retry: bool) -> Result<async_nats::Client> {
    let url = args.server_url();
    let shown = redacted(url);
    // A cluster is given as a comma-separated list; the client tries them in turn and learns
    // the others from the server.
    let servers = server_addrs(url).map_err(|(bad, e)| Error::Config {
        message: format!("{bad:?} in --nats-url {NOT_A_NATS_URL}"),
        source: Some(e.into()),
    })?;
    let first = options(args, Duration::from_secs(if retry { 3 } else { 2 }), false)
        .await?
        .connect(servers.clone())
        .await;
    let refused = |message: String, e| Error::Connect {
        message,
        source: Some(e),
    };
    match first {
        Ok(client) => Ok(client),
        Err(e) if matches!(e.kind(), ConnectErrorKind::AuthorizationViolation) => {
            Err(refused(credentials_refused(args, &shown), e))
        }
        Err(e)
            if matches!(e.kind(), ConnectErrorKind::Tls)
                // rustls's alerts: `CertificateRequired` (mutual TLS without a certificate).
                || e.to_string().to_ascii_lowercase().contains("certificate") =>
        {
            Err(refused(
                format!(
                    "TLS with the NATS server at {shown} failed: check --tls-ca (and --tls-cert/\
                     --tls-key for mutual TLS), and that the server's certificate names the host \
                     in the URL"
                ),
                e,
            ))
        }
        // A service waits for a server that is not up yet: the client keeps trying in the
        // background, and the service starts once it is connected (its first requests would
        // only time out). Said once here, with the cause; the retries log a reminder a minute.
        Err(e) if retry => {
            tracing::warn!("{}; retrying until it answers", unreachable(&shown, &e));
            let client = options(args, Duration::from_secs(3), true)
                .await?
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .map_err(|e| refused(format!("connecting to NATS at {shown}"), e))?;
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(client)
        }
        Err(e) => Err(Error::Connect {
            message: unreachable(&shown, &e),
            source: None,
        }),
    }
}

/// `url` (comma-separated URLs) with the credentials in each left out: what messages and logs
/// show of it.
pub(crate) fn redacted(url: &str) -> String {
    url.split(',')
        .map(|part| match (part.find("://"), part.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &part[..scheme + 3], &part[at..])
            }
            (None, Some(at)) => format!("***{}", &part[at..]),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The user and password (or the token, as a user with no password) in the first URL of
/// `url`, if it has any.
fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    let first: ServerAddr = url.split(',').next()?.trim().parse().ok()?;
    let user = first.username()?.to_owned();
    Some((user, first.password().map(str::to_owned)))
}

/// Why the server at `url` could not be reached, and what to do: one sentence. (The
/// client's error already names its cause, so it is not chained again.)
fn unreachable(url: &str, e: &async_nats::ConnectError) -> String {
    format!(
        "could not reach NATS at {url} ({e}): start nats-server -js, or point --nats-url / \
         NATS_URL at your server"
    )
}

/// Logs a connection's events once each, with the server's URL: connected, lost, and while
/// the server cannot be reached the first failure and then a reminder a minute.
struct Link {
    url: String,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Failed attempts since the connection was last up.
    failures: u64,
    /// When an unreachable server was last reported.
    reported: Option<Instant>,
    /// Whether the connection has been up and was lost.
    lost: bool,
}

impl Link {
    const REMINDER: Duration = Duration::from_secs(60);

    fn on_event(&self, event: async_nats::Event) {
        let url = &self.url;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            async_nats::Event::Connected => match std::mem::take(&mut *state) {
                LinkState {
                    failures: 0,
                    lost: false,
                    ..
                } => {
                    tracing::info!("connected to NATS at {url}")
                }
                LinkState { failures, .. } => {
                    tracing::info!("connected to NATS at {url} after {failures} failed attempt(s)")
                }
            },
            async_nats::Event::Disconnected => {
                state.lost = true;
                state.reported = Some(Instant::now());
                tracing::warn!("lost the connection to NATS at {url}; reconnecting");
            }
            async_nats::Event::ClientError(error) => {
                state.failures += 1;
                let failures = state.failures;
                match state.reported {
                    Some(at) if at.elapsed() < Self::REMINDER => {
                        tracing::debug!("connecting to NATS at {url}: {error}")
                    }
                    Some(_) => {
                        state.reported = Some(Instant::now());
                        tracing::warn!(
                            "still cannot reach NATS at {url} after {failures} attempt(s) (last \
                             error: {error}); retrying"
                        );
                    }
                    None => {
                        state.reported = Some(Instant::now());
                        tracing::warn!("could not reach NATS at {url} ({error}); retrying");
                    }
                }
            }
            // A permission denial reaches the client only as an asynchronous server error (the
            // request itself just goes unanswered): say what it was and where permissions are set.
            async_nats::Event::ServerError(error) => tracing::error!(
                "the NATS server at {url} refused an operation of this connection: {error}; \
                 check the user's permissions (nats/secure/secure.conf lists what each kiln \
                 role needs)"
            ),
            other => tracing::info!("NATS at {url}: {other}"),
        }
    }
}

/// The shared options; `reported`: an unreachable server was already reported (the caller
/// logged the first failure with its cause).
async fn options(
    args: &ConnectOptions,
    timeout: Duration,
    reported: bool,
) -> Result<async_nats::ConnectOptions> {
    let link = Arc::new(Link {
        url: redacted(args.server_url()),
        state: Mutex::new(LinkState {
            reported: reported.then(Instant::now),
            ..LinkState::default()
        }),
    });
    let mut options = async_nats::ConnectOptions::new()
        .name("kiln")
        .connection_timeout(timeout)
        .event_callback(move |event| {
            let link = link.clone();
            async move { link.on_event(event) }
        });
    if let Some(creds) = &args.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| unreadable("credentials file", creds, e))?;
    }
    if let Some(path) = &args.nkey {
        options = options.nkey(nkey_seed(path)?);
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    // Credentials in the URL (nats://user:password@host, nats://token@host), as the nats CLI
    // and NATS's own clients take them, when no flag gives any.
    let flags = args.token.is_some() || args.user.is_some() || args.password.is_some();
    match url_credentials(args.server_url()) {
        Some((user, Some(password))) if !flags => {
            options = options.user_and_password(user, password);
        }
        Some((token, None)) if !flags => options = options.token(token),
        _ => {}
    }
    match (&args.user, &args.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone())
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::config(
                "--user and --password go together; give both or neither",
            ));
        }
        (None, None) => {}
    }
    tls(options, args)
}

/// What to say of credentials the server refused: "refused these credentials" when none
/// were given sent people looking for them.
fn credentials_refused(args: &ConnectOptions, shown: &str) -> String {
    let given = [&args.token, &args.user, &args.password]
        .iter()
        .any(|c| c.is_some())
        || args.creds.is_some()
        || args.nkey.is_some()
        || args.server_url().contains('@');
    let what = match given {
        true => "refused these credentials: check",
        false => "requires credentials, and none were given: give",
    };
    format!(
        "the NATS server at {shown} {what} --user/--password, --token, --nkey or --creds \
         (NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_NKEY, NATS_CREDS), or a NATS context that \
         holds them (--context, NATS_CONTEXT)"
    )
}

/// [`Error::Config`] for a file that cannot be read.
fn unreadable(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Config {
        message: format!("reading {what} {}", path.display()),
        source: Some(e.into()),
    }
}

/// The nkey seed in the file at `path`, checked: a bad seed would otherwise surface as the
/// server being unreachable.
fn nkey_seed(path: &std::path::Path) -> Result<String> {
    let seed = std::fs::read_to_string(path).map_err(|e| unreadable("nkey seed file", path, e))?;
    let seed = seed.trim();
    if let Err(e) = nkeys::KeyPair::from_seed(seed) {
        return Err(Error::Config {
            message: format!(
                "{} holds no valid nkey seed: give a file with the user's seed (SU…, as \
                 `nk -gen user` makes)",
                path.display()
            ),
            source: Some(e.into()),
        });
    }
    Ok(seed.to_owned())
}

/// `options` with the TLS settings of `args`; files that cannot be read are named here, which
/// the TLS setup would report as a failed handshake with the server.
fn tls(
    mut options: async_nats::ConnectOptions,
    args: &ConnectOptions,
) -> Result<async_nats::ConnectOptions> {
    let files = [
        ("--tls-ca certificate", &args.tls_ca, "x509"),
        ("--tls-cert certificate", &args.tls_cert, "x509"),
        ("--tls-key private key", &args.tls_key, "pkey"),
    ];
    let mut read = Vec::new();
    for (what, path, tool) in files {
        if let Some(path) = path {
            let bytes = std::fs::read(path).map_err(|e| unreadable(what, path, e))?;
            read.push((what, path, tool, bytes));
        }
    }
    // A file with no PEM block in it (a DER file, the wrong file) was reported by the
    // handshake as an unknown issuer. (Each file is read first: a missing one is named first.)
    for (what, path, tool, bytes) in read {
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
            return Err(Error::Config {
                message: format!(
                    "{what} {} holds no PEM block (-----BEGIN …-----): give a PEM file \
                     (openssl {tool} -inform der -in FILE -out FILE.pem converts a DER one)",
                    path.display()
                ),
                source: None,
            });
        }
    }
    if let Some(ca) = &args.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if args.tls_first {
        options = options.tls_first();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_used_and_never_shown() {
        assert_eq!(
            redacted("nats://alice:wonder@10.0.0.1:4222, tls://s3cret@b:4222,nats://c:4222"),
            "nats://***@10.0.0.1:4222, tls://***@b:4222,nats://c:4222"
        );
        assert_eq!(redacted("alice:wonder@host:4222"), "***@host:4222");
        assert_eq!(
            url_credentials("nats://alice:wonder@127.0.0.1:4222,nats://b:4222"),
            Some(("alice".into(), Some("wonder".into())))
        );
        assert_eq!(
            url_credentials("nats://s3cret@127.0.0.1:4222"),
            Some(("s3cret".into(), None))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
    }
}
