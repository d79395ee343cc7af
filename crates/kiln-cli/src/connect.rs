//! Connecting to NATS with the auth and TLS options every subcommand shares.

use std::time::Duration;

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
    let first = options(args, Duration::from_secs(if retry { 3 } else { 2 }))
        .await?
        .connect(servers.clone())
        .await;
    match first {
        Ok(client) => Ok(client),
        Err(e) if matches!(e.kind(), ConnectErrorKind::AuthorizationViolation) => {
            Err(e).with_context(|| {
                format!(
                    "the NATS server at {url} refused these credentials: check --user/--password, \
                     --nkey or --creds (NATS_USER, NATS_PASSWORD, NATS_NKEY, NATS_CREDS)"
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
        // background.
        Err(_) if retry => options(args, Duration::from_secs(3))
            .await?
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {url}")),
        Err(e) => Err(e).with_context(|| {
            format!(
                "could not reach NATS at {url}: start nats-server -js, or point --nats-url / \
                 NATS_URL at your server"
            )
        }),
    }
}

async fn options(args: &NatsArgs, timeout: Duration) -> anyhow::Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .name("kiln")
        .connection_timeout(timeout)
        // A permission denial reaches the client only as an asynchronous server error (the
        // request itself just goes unanswered): say what it was and where permissions are set.
        .event_callback(|event| async move {
            match event {
                async_nats::Event::ServerError(error) => tracing::error!(
                    "the NATS server refused an operation of this connection: {error}; check \
                     the user's permissions (nats/secure/secure.conf lists what each kiln role \
                     needs)"
                ),
                other => tracing::info!("event: {other}"),
            }
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
