//! `kiln ls` and `kiln rm`: what `KILN_DATA` holds, and freeing its space.

use std::process::ExitCode;
use std::time::Duration;

use kiln_data::store::{Bucket, Listed, Listing, Orphan};
use kiln_proto::BUCKET_DATA;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::data::connect;
use crate::cli::{Format, LsArgs, NatsArgs, RmArgs};

/// `kiln ls -o json`.
#[derive(Serialize)]
struct Shown<'a> {
    objects: Vec<Object<'a>>,
    /// Names whose stored info kiln cannot read (another client wrote it).
    unreadable: &'a [String],
    /// Bytes the bucket's stream holds (chunks, infos, and orphans' chunks).
    bytes: u64,
    /// The most it may hold (`kiln init --data-max-bytes`); null: no limit.
    max_bytes: Option<u64>,
    /// Chunks no object names: uploads that never stored their object's info.
    orphans: Vec<OrphanShown>,
    /// Entries on subjects that encode no name as kiln addresses names (another client wrote
    /// them), by subject.
    stray: &'a [String],
}

#[derive(Serialize)]
struct Object<'a> {
    name: &'a str,
    size: u64,
    #[serde(with = "time::serde::rfc3339")]
    stored: OffsetDateTime,
    sha256: Option<String>,
    description: Option<&'a str>,
    /// For a link, the object it leads to.
    link: Option<LinkShown<'a>>,
}

#[derive(Serialize)]
struct LinkShown<'a> {
    bucket: &'a str,
    /// Null: the whole bucket.
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct OrphanShown {
    chunks: u64,
    #[serde(with = "time::serde::rfc3339")]
    newest: OffsetDateTime,
}

impl<'a> Object<'a> {
    fn of(listed: &'a Listed) -> Self {
        let info = &listed.info;
        Object {
            name: &info.name,
            size: info.size as u64,
            stored: listed.stored,
            sha256: info
                .digest
                .as_deref()
                .and_then(kiln_data::store::sha256_hex),
            description: info.description.as_deref(),
            link: info
                .options
                .as_ref()
                .and_then(|o| o.link.as_ref())
                .map(|l| LinkShown {
                    bucket: &l.bucket,
                    name: l.name.as_deref(),
                }),
        }
    }
}

/// `kiln ls [PREFIX] [-o json]`: the objects, by name; then (on stderr, or in the JSON) their
/// total, the bucket's use against its limit, and the chunks no object names.
pub async fn ls(nats: &NatsArgs, args: LsArgs) -> anyhow::Result<ExitCode> {
    let bucket = open(nats).await?;
    // Orphans are found against every name, whatever the prefix.
    let everything = kiln_data::store::list(&bucket, "").await?;
    let orphans = kiln_data::store::orphans(&bucket, &everything).await?;
    let everything_stray = everything.stray.clone();
    let (bytes, max_bytes) = kiln_data::store::usage(&bucket).await?;
    let listing = everything.named(&args.prefix);
    let objects: Vec<Object> = listing.objects.iter().map(Object::of).collect();
    if args.format.format == Format::Json {
        super::print_json(&Shown {
            objects,
            unreadable: &listing.unreadable,
            bytes,
            max_bytes,
            orphans: orphans
                .iter()
                .map(|o| OrphanShown {
                    chunks: o.chunks,
                    newest: o.newest,
                })
                .collect(),
            stray: &everything_stray,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&objects, &listing);
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let under = match args.prefix.as_str() {
        "" => String::new(),
        prefix => format!(" named {prefix}…"),
    };
    eprintln!(
        "{} object{}{under}, {}; {BUCKET_DATA} holds {}{}",
        objects.len(),
        if objects.len() == 1 { "" } else { "s" },
        human(total),
        human(bytes),
        max_bytes.map_or(String::new(), |max| format!(" of its {}", human(max))),
    );
    if let Some(line) = orphans_line(&orphans) {
        eprintln!("{line}");
    }
    if !everything_stray.is_empty() {
        eprintln!(
            "{} entr{} on subjects that encode no object name as kiln writes names (another \
             client wrote them; `-o json` lists them under stray): kiln leaves them, `nats \
             stream purge OBJ_KILN_DATA --subject SUBJECT` removes one",
            everything_stray.len(),
            if everything_stray.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(objects: &[Object], listing: &Listing) {
    if objects.is_empty() && listing.unreadable.is_empty() {
        return;
    }
    println!("{:>12}  {:<20}  name", "size", "stored (UTC)");
    for o in objects {
        let stored = o
            .stored
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let link = match &o.link {
            None => String::new(),
            Some(LinkShown { bucket, name: None }) => format!(" -> (all of bucket {bucket})"),
            Some(LinkShown {
                bucket,
                name: Some(name),
            }) if *bucket == BUCKET_DATA => format!(" -> {}", shown_name(name)),
            Some(LinkShown {
                bucket,
                name: Some(name),
            }) => {
                format!(" -> {} (bucket {bucket})", shown_name(name))
            }
        };
        println!("{:>12}  {stored:<20}  {}{link}", o.size, shown_name(o.name));
    }
    for name in &listing.unreadable {
        println!(
            "{:>12}  {:<20}  {} (its entry does not parse: another client wrote it; `kiln rm` \
             removes it)",
            "?",
            "?",
            shown_name(name)
        );
    }
}

/// A name on one line of the table, quoted as Rust quotes strings (control and invisible
/// characters escaped) where it holds any, whitespace other than a space, or what the table
/// itself writes (a leading quote, ` -> `).
fn shown_name(name: &str) -> String {
    let plain = |c: char| c == ' ' || c.escape_debug().eq(std::iter::once(c));
    let quoted = !name.chars().all(plain) || name.starts_with('"') || name.contains(" -> ");
    match quoted {
        true => format!("{name:?}"),
        false => name.to_owned(),
    }
}

fn orphans_line(orphans: &[Orphan]) -> Option<String> {
    let newest = orphans.iter().map(|o| o.newest).max()?;
    let chunks: u64 = orphans.iter().map(|o| o.chunks).sum();
    let ago = (OffsetDateTime::now_utc() - newest).whole_seconds().max(0) as u64;
    Some(format!(
        "{chunks} chunk{} of {} upload{} that stored no object (killed, or still on its way; \
         the newest {} ago) count against the bucket: `kiln rm --orphans` removes those idle \
         for an hour, or they age out with --data-max-age",
        if chunks == 1 { "" } else { "s" },
        orphans.len(),
        if orphans.len() == 1 { "" } else { "s" },
        humantime::format_duration(Duration::from_secs(ago)),
    ))
}

fn human(bytes: u64) -> String {
    match bytes < 1024 {
        true => format!("{bytes} bytes"),
        false => format!("{bytes} bytes ({})", indicatif::HumanBytes(bytes)),
    }
}

async fn open(nats: &NatsArgs) -> anyhow::Result<Bucket> {
    let js = connect(nats).await?;
    Ok(kiln_data::store::open(&js).await?)
}

/// How `kiln rm` went.
#[derive(Default)]
struct Outcome {
    missing: bool,
    failed: bool,
}

/// `kiln rm NAME... [--prefix P] [--orphans]`: remove each object (a link removes the link
/// only), then every object named `P…`, then the orphans' chunks. Every name is tried; exit
/// status 1 when one could not be removed, else [`super::EXIT_NOT_FOUND`] when a name was not
/// there or a prefix named nothing.
pub async fn rm(nats: &NatsArgs, args: RmArgs) -> anyhow::Result<ExitCode> {
    let bucket = open(nats).await?;
    let mut outcome = Outcome::default();
    for name in &args.names {
        remove(&bucket, name, &mut outcome).await;
    }
    if let Some(prefix) = &args.prefix {
        let listing = kiln_data::store::list(&bucket, prefix).await?;
        if listing.objects.is_empty() && listing.unreadable.is_empty() {
            eprintln!("kiln: no object named {prefix}… in {BUCKET_DATA}");
            outcome.missing = true;
        }
        let names = listing.objects.iter().map(|o| &o.info.name);
        for name in names.chain(&listing.unreadable) {
            remove(&bucket, name, &mut outcome).await;
        }
    }
    if args.orphans {
        remove_orphans(&bucket, args.older_than).await?;
    }
    Ok(match outcome {
        Outcome { failed: true, .. } => ExitCode::FAILURE,
        Outcome { missing: true, .. } => ExitCode::from(super::EXIT_NOT_FOUND),
        _ => ExitCode::SUCCESS,
    })
}

async fn remove(bucket: &Bucket, name: &str, outcome: &mut Outcome) {
    match kiln_data::store::remove(bucket, name).await {
        Ok(Some(size)) => eprintln!("removed object {name:?} ({size} bytes) from {BUCKET_DATA}"),
        Ok(None) => {
            eprintln!("kiln: no object {name:?} in {BUCKET_DATA}");
            outcome.missing = true;
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            outcome.failed = true;
        }
    }
}

async fn remove_orphans(bucket: &Bucket, older_than: Duration) -> anyhow::Result<()> {
    let listing = kiln_data::store::list(bucket, "").await?;
    let orphans = kiln_data::store::orphans(bucket, &listing).await?;
    let purged = kiln_data::store::remove_orphans(bucket, orphans, older_than).await?;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    eprintln!(
        "removed {} chunk{} of {} upload{} that stored no object from {BUCKET_DATA}{}",
        purged.chunks,
        plural(purged.chunks),
        purged.uploads,
        plural(purged.uploads as u64),
        match purged.left {
            0 => String::new(),
            left => format!(
                "; left {left} that stored a chunk within {} (--older-than)",
                humantime::format_duration(older_than)
            ),
        }
    );
    Ok(())
}
