//! Connecting to NATS with the auth and TLS options every subcommand shares.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};

use crate::cli::NatsArgs;

pub async fn connect(args: &NatsArgs) -> anyhow::Result<async_nats::Client> {
    connect_with(args, true).await
}

/// Connect; `retry` keeps trying in the background when the server is not up yet (services),
/// otherwise the first failure is returned (one-shot commands, probing). Refused
/// credentials and TLS failures are returned at once either way.
pub async fn connect_with(args: &NatsArgs, retry: bool) -> anyhow::Result<async_nats::Client> {
    let url = args.nats_url.as_str();
    // A cluster is given as a comma-separated list; the client tries them in turn and learns
    // the others from the server.
    let servers: Vec<ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().with_context(|| {
                format!(
                    "{s:?} in --nats-url is not a NATS URL: give nats://host:port, \
                     comma-separated for several servers"
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let first = options(args, Duration::from_secs(if retry { 3 } else { 2 }), false)
        .await?
        .connect(servers.clone())
        .await;
    match first {
        Ok(client) => Ok(client),
        Err(e) if matches!(e.kind(), ConnectErrorKind::AuthorizationViolation) => {
            Err(e).with_context(|| {
                format!(
                    "the NATS server at {url} refused these credentials: check --user/--password, \
                     --token, --nkey or --creds (NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_NKEY, \
                     NATS_CREDS) and the NATS context in use (--context, NATS_CONTEXT)"
                )
            })
        }
        Err(e)
            if matches!(e.kind(), ConnectErrorKind::Tls)
                || e.to_string().contains("certificate") =>
        {
            Err(e).with_context(|| {
            format!(
                "TLS with the NATS server at {url} failed: check --tls-ca (and --tls-cert/--tls-key \
                 for mutual TLS), and that the server's certificate names the host in the URL"
                )
            })
        }
        // A service waits for a server that is not up yet: the client keeps trying in the
        // background, and the service starts once it is connected (its first requests would
        // only time out). Said once here, with the cause; the retries log a reminder a minute.
        Err(e) if retry => {
            tracing::warn!("{}; retrying until it answers", unreachable(url, &e));
            let client = options(args, Duration::from_secs(3), true)
                .await?
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(client)
        }
        Err(e) => Err(anyhow::anyhow!("{}", unreachable(url, &e))),
    }
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
    args: &NatsArgs,
    timeout: Duration,
    reported: bool,
) -> anyhow::Result<ConnectOptions> {
    let link = Arc::new(Link {
        url: args.nats_url.clone(),
        state: Mutex::new(LinkState {
            reported: reported.then(Instant::now),
            ..LinkState::default()
        }),
    });
    let mut options = ConnectOptions::new()
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
            .with_context(|| format!("reading credentials file {}", creds.display()))?;
    }
    if let Some(path) = &args.nkey {
        let seed = std::fs::read_to_string(path)
            .with_context(|| format!("reading nkey seed file {}", path.display()))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    match (&args.user, &args.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone())
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("--user and --password go together; give both or neither")
        }
        (None, None) => {}
    }
    if let Some(ca) = &args.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}
