//! Connecting to NATS with the auth and TLS options every subcommand shares.

use std::time::Duration;

use anyhow::Context as _;

use crate::cli::NatsArgs;

pub async fn connect(args: &NatsArgs) -> anyhow::Result<async_nats::Client> {
    connect_with(args, true).await
}

/// Connect; `retry` keeps trying in the background when the server is not up yet (services),
/// otherwise the first failure is returned (one-shot commands, probing).
pub async fn connect_with(args: &NatsArgs, retry: bool) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("kiln")
        .connection_timeout(Duration::from_secs(3))
        .retry_on_initial_connect();
    if !retry {
        options = async_nats::ConnectOptions::new()
            .name("kiln")
            .connection_timeout(Duration::from_secs(2));
    }
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
    let url = args.nats_url.clone();
    // A cluster is given as a comma-separated list; the client tries them in turn and learns
    // the others from the server.
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().with_context(|| {
                format!("{s:?} in --nats-url is not a NATS URL: give nats://host:port, comma-separated for several servers")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if retry {
        // With retry_on_initial_connect the client connects in the background; a
        // service waits until it is connected.
        let client = options
            .connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(client)
    } else {
        options.connect(servers).await.with_context(|| {
            format!(
                "could not reach NATS at {url}: start nats-server -js, or point --nats-url / \
                 NATS_URL at your server"
            )
        })
    }
}
