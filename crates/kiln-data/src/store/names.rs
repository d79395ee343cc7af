//! Objects' names and infos: which names kiln uses, an object's info (a link followed once;
//! nats-py's deleted form read as deleted).

use async_nats::jetstream::object_store::{InfoError, InfoErrorKind, ObjectInfo};
use kiln_proto::BUCKET_DATA;

use super::{Bucket, chunks};
use crate::formats::DataError;

pub(super) fn not_found(name: &str) -> DataError {
    DataError::Invalid(format!(
        "object {name:?} not found in {BUCKET_DATA}: put it first (kiln put FILE --name {}; \
         in Python, await client.put({name:?}, path))",
        for_shell(name)
    ))
}

/// `name` as one shell word (`'a b'`, `'*'`), for a command an error suggests; as Rust
/// quotes it where no shell can take it (a NUL).
pub(super) fn for_shell(name: &str) -> String {
    shlex::try_quote(name).map_or_else(|_| format!("{name:?}"), |quoted| quoted.into_owned())
}

/// Longest object name kiln reads or stores, in bytes. The object store names an object's
/// metadata subject by the name in base64, and a subject past the server's 4 KiB control
/// line (a name of about 2,900 bytes) makes the server close the connection, which cut off
/// every other job of the worker that tried.
pub const MAX_OBJECT_NAME: usize = 1024;

/// Whether kiln asks the server about object `name` at all (see [`MAX_OBJECT_NAME`]).
pub(super) fn usable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_OBJECT_NAME
}

pub(super) fn bad_name(name: &str) -> DataError {
    let shown: String = name.chars().take(60).collect();
    let shown = match shown.len() < name.len() {
        true => format!("{shown:?}… ({} bytes)", name.len()),
        false => format!("{name:?}"),
    };
    DataError::Invalid(format!(
        "object name {shown} is not valid: use a non-empty name of at most {MAX_OBJECT_NAME} \
         bytes"
    ))
}

/// Whether `error` says the stored metadata is not an object's info as async-nats reads it.
pub(super) fn undecodable(error: &InfoError) -> bool {
    error.kind() == InfoErrorKind::Other && error.to_string().contains("decode info payload")
}

pub(super) fn info_error(name: &str, error: InfoError) -> DataError {
    match error.kind() {
        InfoErrorKind::NotFound => not_found(name),
        InfoErrorKind::InvalidName => bad_name(name),
        // What is stored is not an object's metadata as this client reads it: a fault of the
        // data, not of the connection.
        InfoErrorKind::Other if undecodable(&error) => DataError::Invalid(format!(
            "object {name}'s entry in {BUCKET_DATA} does not parse ({error}): another client \
             wrote it; put the object again"
        )),
        InfoErrorKind::TimedOut | InfoErrorKind::Other => DataError::Io(format!(
            "could not look up object {name} in {BUCKET_DATA} ({error}); check the connection \
             to NATS"
        )),
    }
}

/// The object's info; a deleted object is not found. A link is followed once, within
/// `KILN_DATA` (as the client makes them: never to another link).
pub(super) async fn stored_info(store: &Bucket, name: &str) -> Result<ObjectInfo, DataError> {
    let info = plain_info(store, name).await?;
    let Some(link) = info.options.as_ref().and_then(|o| o.link.as_ref()) else {
        return chunks_named(name, info);
    };
    let target = match (&link.name, link.bucket == BUCKET_DATA) {
        (Some(target), true) => target.clone(),
        (None, _) => {
            return Err(DataError::Invalid(format!(
                "object {name} is a link to the whole bucket {}, not to an object: kiln reads \
                 one object; name it (in {BUCKET_DATA})",
                link.bucket
            )));
        }
        _ => {
            return Err(DataError::Invalid(format!(
                "object {name} is a link to {} in bucket {}: kiln reads objects in \
                 {BUCKET_DATA} only; put the data there and name it",
                link.name.as_deref().unwrap_or_default(),
                link.bucket
            )));
        }
    };
    let info = plain_info(store, &target).await.map_err(|e| match e {
        DataError::Invalid(why) => DataError::Invalid(format!(
            "object {name} is a link to {target}, which cannot be read: {why}"
        )),
        other => other,
    })?;
    if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
        return Err(DataError::Invalid(format!(
            "object {name} is a link to {target}, itself a link: kiln follows one link; name \
             the object the links lead to"
        )));
    }
    chunks_named(&target, info)
}

/// `info`, when it names its chunks by a `nuid` that can be a subject's last token (or it has
/// none to name). Another client may write any info: an empty `nuid` made the chunks' subject
/// invalid, and the job was retried as a connection fault until it was dead-lettered.
fn chunks_named(name: &str, info: ObjectInfo) -> Result<ObjectInfo, DataError> {
    match subject_token(&info.nuid) || info.chunks == 0 {
        true => Ok(info),
        false => Err(DataError::Invalid(format!(
            "object {name}'s entry in {BUCKET_DATA} names its chunks by {:?}, which no chunk \
             can be stored under: another client wrote it; put the object again",
            info.nuid
        ))),
    }
}

/// Whether `nuid` can be a subject's last token (chunks can be stored under it).
pub(super) fn subject_token(nuid: &str) -> bool {
    !nuid.is_empty()
        && !nuid
            .bytes()
            .any(|b| matches!(b, b'.' | b'*' | b'>') || b.is_ascii_whitespace() || b < 0x20)
}

/// Object `name`'s own info (a link's, for a link); a deleted object is not found.
pub(super) async fn plain_info(store: &Bucket, name: &str) -> Result<ObjectInfo, DataError> {
    live_info(store, name).await?.ok_or_else(|| not_found(name))
}

/// Object `name`'s own stored size (a link's: 0), `None` when it is not there; an entry
/// another client wrote that does not parse is an error saying so, not "no object".
pub async fn stored_size(store: &Bucket, name: &str) -> Result<Option<u64>, DataError> {
    Ok(live_info(store, name).await?.map(|info| info.size as u64))
}

/// Object `name`'s own info, `None` when it is not there: never stored, or deleted by any
/// client (nats-py marks an object deleted with `"mtime": ""`, which async-nats does not
/// parse).
async fn live_info(store: &Bucket, name: &str) -> Result<Option<ObjectInfo>, DataError> {
    if !usable_name(name) {
        return Err(bad_name(name));
    }
    match store.info(name).await {
        Ok(info) if info.deleted => Ok(from_the_leader(store, name).await),
        Ok(info) => Ok(Some(info)),
        Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(from_the_leader(store, name).await),
        Err(e) if undecodable(&e) && chunks::marked_deleted(&store.stream, name).await => Ok(None),
        Err(e) => Err(info_error(name, e)),
    }
}

/// Object `name`'s live info as the stream's leader holds it. `info` is read by a direct get
/// (`KILN_DATA` allows them), which any replica may answer, one that lags too: an object
/// stored a moment ago (`kiln submit --input a=@f` stores it, then sends the job) was then
/// "not found", a final `invalid_input`. Not found or deleted is asked again of the leader.
async fn from_the_leader(store: &Bucket, name: &str) -> Option<ObjectInfo> {
    let message = store
        .stream
        .get_last_raw_message_by_subject(&chunks::meta_subject(name))
        .await
        .ok()?;
    serde_json::from_slice::<ObjectInfo>(&message.payload)
        .ok()
        .filter(|info| !info.deleted)
}

/// How messages name the object `name` whose info is `info`: `object NAME`, followed by its
/// description (kiln records the file it was stored from: `object inputs/…/x (file
/// data.csv)`), bounded and on one line.
pub(super) fn described(name: &str, info: &ObjectInfo) -> String {
    let description = info
        .description
        .as_deref()
        .map(|d| {
            let shown: String = d
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            shown.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|d| !d.is_empty());
    match description {
        Some(d) => format!("object {name} ({})", kiln_proto::cut(&d, 80)),
        None => format!("object {name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_in_suggested_commands_are_one_shell_word() {
        assert_eq!(super::for_shell("a.npy"), "a.npy");
        assert_eq!(super::for_shell("*"), "'*'");
        assert_eq!(super::for_shell("a b\nc"), "'a b\nc'");
        assert_eq!(super::for_shell("it's"), r#""it's""#);
        assert_eq!(super::for_shell("nul\0"), r#""nul\0""#);
    }
}
