//! `kiln watch`: the status view, refreshed in place.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;

use crate::cli::{NatsArgs, WatchArgs};

pub async fn run(nats: &NatsArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    if args.once {
        print!("{}", super::status::overview(&js).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(100)));
    let shutdown = crate::signal::shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                let body = match super::status::overview(&js).await {
                    Ok(body) => body,
                    Err(e) => format!("{e:#}\n"),
                };
                let now = time::OffsetDateTime::now_utc();
                // Clear the screen, home the cursor, redraw.
                print!("\x1b[2J\x1b[H kiln watch — {} — every {} ms, Ctrl-C to quit\n\n{body}", now.time(), args.interval_ms);
                let _ = std::io::stdout().flush();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
