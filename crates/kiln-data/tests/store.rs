//! The object store against a real nats-server.

use std::collections::BTreeMap;

use async_nats::jetstream;
use kiln_data::store::{self, Bucket};
use kiln_data::{DataError, HostTensor, Loaded, Model, Want, formats};
use kiln_proto::{BUCKET_DATA, ObjectRef, Topology};

const MIB: u64 = 1024 * 1024;

/// A server with the `KILN_DATA` bucket (kept alive by the returned server).
async fn bucket() -> (kiln_testkit::NatsServer, jetstream::Context, Bucket) {
    let server = kiln_testkit::NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_object_store(Topology::default().data_bucket())
        .await
        .unwrap();
    let store = store::open(&js).await.unwrap();
    (server, js, store)
}

fn invalid(result: Result<impl std::fmt::Debug, DataError>) -> String {
    match result.expect_err("expected an error") {
        DataError::Invalid(m) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn tensor(loaded: Loaded) -> HostTensor {
    match loaded {
        Loaded::Tensor(t) => t,
        other => panic!("expected a tensor, got {other:?}"),
    }
}

#[tokio::test]
async fn put_tensor_then_fetch_round_trips_a_million_values() {
    let (_server, _js, store) = bucket().await;
    let data: Vec<f32> = (0..1_000_000).map(|i| (i as f32).sin() * 1e3).collect();
    let t = HostTensor::new(vec![1000, 1000], data);

    let d = store::put_tensor(&store, "in/x.npy", &t, "npy", "")
        .await
        .unwrap();
    assert_eq!(d.bucket, BUCKET_DATA);
    assert_eq!(d.name, "in/x.npy");
    assert_eq!((d.format.as_str(), d.dtype.as_str()), ("npy", "f32"));
    assert_eq!(d.shape, vec![1000, 1000]);
    assert_eq!(
        d.size,
        formats::npy_header(&t.shape).len() as u64 + 4_000_000
    );
    assert_eq!(d.sha256.len(), 64);

    // With the digest the put reported, and in any case.
    let mut reference = ObjectRef::new("in/x.npy");
    reference.sha256 = Some(d.sha256.to_uppercase());
    let back = store::fetch(&store, &reference, Want::Tensor, 64 * MIB, 1 << 20).await;
    assert_eq!(tensor(back.unwrap()), t);

    // `kiln get`: the very bytes of encode_npy, and the same digest.
    let mut out = Vec::new();
    let got = store::get_to_writer(&store, "in/x.npy", &mut out)
        .await
        .unwrap();
    assert_eq!(out, formats::encode_npy(&t));
    assert_eq!((got.size, got.sha256), (d.size, d.sha256));

    // Over the element limit: refused from the header.
    let refused = store::fetch(&store, &reference, Want::Tensor, 64 * MIB, 999_999).await;
    assert!(
        matches!(refused, Err(DataError::TooLarge(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refuses_before_downloading_a_missing_too_large_or_unexpected_object() {
    let (_server, _js, store) = bucket().await;
    let t = HostTensor::new(vec![256, 1024], vec![0.5; 256 * 1024]);
    let d = store::put_tensor(&store, "big", &t, "npy", "")
        .await
        .unwrap();

    let m =
        invalid(store::fetch(&store, &ObjectRef::new("nope"), Want::Tensor, MIB, 1 << 20).await);
    assert_eq!(
        m,
        "object \"nope\" not found in KILN_DATA: put it first (kiln put FILE --name nope; in \
         Python, await client.put(\"nope\", path))"
    );

    match store::fetch(
        &store,
        &ObjectRef::new("big"),
        Want::Tensor,
        MIB / 2,
        1 << 30,
    )
    .await
    {
        Err(DataError::TooLarge(m)) => assert!(
            m.starts_with("object big is 1.0 MiB, over this worker's memory budget of 0.5 MiB"),
            "{m}"
        ),
        other => panic!("expected TooLarge, got {other:?}"),
    }

    let mut reference = ObjectRef::new("big");
    let wrong = "0".repeat(64);
    reference.sha256 = Some(wrong.clone());
    let m = invalid(store::fetch(&store, &reference, Want::Tensor, 2 * MIB, 1 << 20).await);
    assert_eq!(
        m,
        format!(
            "object big has SHA-256 {}, not the {wrong} the job asks for; put the right object \
             or fix \"sha256\"",
            d.sha256
        )
    );
    // Measured (a worker measures every object before it waits for memory to load it): the
    // pinned digest is checked first, before the first chunk is read or the budget waited for.
    reference.sha256 = Some(wrong.clone());
    match store::load_size(&store, &reference, Want::Tensor).await {
        Err(DataError::Invalid(m)) => assert!(m.contains("the job asks for"), "{m}"),
        other => panic!(
            "expected the digest refused, got {:?}",
            other.map(|m| m.size())
        ),
    }
    reference.sha256 = Some("xyz".into());
    let m = invalid(store::fetch(&store, &reference, Want::Tensor, 2 * MIB, 1 << 20).await);
    assert!(m.contains("is not 64 hex digits"), "{m}");
}

/// An object stored from a file records the file's name as its description (unless it is the
/// object's name), and what a worker says about the object names the file beside it.
#[tokio::test]
async fn objects_stored_from_files_are_named_with_their_file() {
    let (_server, _js, store) = bucket().await;
    let npy = formats::encode_npy(&HostTensor::new(vec![300_000], vec![1.0; 300_000]));
    let d = store::put_file_reader(&store, "inputs/j/s/a", &mut &npy[..], "weights.npy")
        .await
        .unwrap();
    assert_eq!(d.format, "npy");
    let info = store.info("inputs/j/s/a").await.unwrap();
    assert_eq!(info.description.as_deref(), Some("file weights.npy"));
    store::put_file_reader(&store, "weights.npy", &mut &npy[..], "weights.npy")
        .await
        .unwrap();
    assert_eq!(store.info("weights.npy").await.unwrap().description, None);

    let reference = ObjectRef::new("inputs/j/s/a");
    match store::fetch(&store, &reference, Want::Tensor, MIB / 2, 1 << 30).await {
        Err(DataError::TooLarge(m)) => assert!(
            m.starts_with("object inputs/j/s/a (file weights.npy) is 1.1 MiB, over"),
            "{m}"
        ),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let m = invalid(store::fetch(&store, &reference, Want::Dataset, 4 * MIB, 1 << 30).await);
    assert!(
        m.starts_with("object inputs/j/s/a (file weights.npy) is a .npy tensor, but this job"),
        "{m}"
    );
    let measured = store::load_size(&store, &reference, Want::Tensor)
        .await
        .unwrap();
    assert_eq!(
        measured.what("inputs/j/s/a"),
        "object inputs/j/s/a (file weights.npy)"
    );
}

#[tokio::test]
async fn corrupt_and_truncated_objects_are_invalid() {
    let (_server, js, store) = bucket().await;
    let t = HostTensor::new(vec![4, 4], (0..16).map(|i| i as f32).collect());
    store::put_tensor(&store, "x", &t, "npy", "").await.unwrap();

    // One more chunk behind the object's back: it holds more than its info says.
    let info = store.info("x").await.unwrap();
    js.publish(
        format!("$O.{BUCKET_DATA}.C.{}", info.nuid),
        vec![1u8, 2, 3].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let m = invalid(store::fetch(&store, &ObjectRef::new("x"), Want::Tensor, MIB, 1 << 20).await);
    assert_eq!(
        m,
        "object x is corrupt: it holds more than its info says; put it again"
    );
    let m = invalid(store::get_to_writer(&store, "x", &mut Vec::new()).await);
    assert!(m.starts_with("object x is corrupt"), "{m}");

    // An object of one chunk, measured (its chunk read whole), whose info names other bytes:
    // the measured bytes are checked too.
    store::put_tensor(&store, "real", &t, "npy", "")
        .await
        .unwrap();
    publish_meta(&js, &store, "forged", |meta| {
        meta["digest"] = format!("SHA-256={}", "A".repeat(43) + "=").into();
    })
    .await;
    let forged = ObjectRef::new("forged");
    let measured = store::load_size(&store, &forged, Want::Tensor)
        .await
        .unwrap();
    let fetched = store::fetch_measured(&store, &forged, &measured, Want::Tensor, MIB, 1 << 20);
    let m = invalid(fetched.await);
    assert!(m.starts_with("object forged is corrupt"), "{m}");
    let real = ObjectRef::new("real");
    let measured = store::load_size(&store, &real, Want::Tensor).await.unwrap();
    let fetched = store::fetch_measured(&store, &real, &measured, Want::Tensor, MIB, 1 << 20);
    assert_eq!(tensor(fetched.await.unwrap()), t);

    // A file cut short when it was uploaded.
    let npy = formats::encode_npy(&t);
    let d = store::put_reader(&store, "cut", &mut &npy[..npy.len() - 6])
        .await
        .unwrap();
    assert_eq!(
        (d.format.as_str(), d.shape.as_slice()),
        ("npy", &[4u64, 4][..])
    );
    let m = invalid(store::fetch(&store, &ObjectRef::new("cut"), Want::Tensor, MIB, 1 << 20).await);
    assert_eq!(
        m,
        "object cut: truncated: header says 64 bytes of values, found 58; upload the whole file again"
    );
}

#[tokio::test]
async fn safetensors_entries_are_picked_by_key() {
    let (_server, _js, store) = bucket().await;
    let w = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let d = store::put_tensor(&store, "one", &w, "safetensors", "w")
        .await
        .unwrap();
    assert_eq!(
        (d.format.as_str(), d.dtype.as_str()),
        ("safetensors", "f32")
    );
    let fetched = store::fetch(&store, &ObjectRef::new("one"), Want::Tensor, MIB, 100).await;
    assert_eq!(tensor(fetched.unwrap()), w);

    let model = Model {
        tensors: vec![
            ("w".into(), w.clone()),
            ("b".into(), HostTensor::new(vec![2], vec![-1.0, 1.0])),
        ],
        metadata: BTreeMap::from([("epochs".into(), "3".into())]),
    };
    let d = store::put_model(&store, "model", &model).await.unwrap();
    assert_eq!((d.format.as_str(), d.shape.len()), ("safetensors", 0));
    let mut reference = ObjectRef::new("model");
    reference.tensor = Some("b".into());
    let b = store::fetch(&store, &reference, Want::Tensor, MIB, 100)
        .await
        .unwrap();
    assert_eq!(tensor(b).data, vec![-1.0, 1.0]);

    reference.tensor = Some("c".into());
    let m = invalid(store::fetch(&store, &reference, Want::Tensor, MIB, 100).await);
    assert_eq!(
        m,
        "object model has no tensor \"c\"; pick one of \"b\", \"w\" with \"tensor\" (kiln \
         submit: --input KEY=@FILE#NAME, or KEY=OBJECT#NAME for one stored)"
    );
    reference.tensor = None;
    let m = invalid(store::fetch(&store, &reference, Want::Tensor, MIB, 100).await);
    assert!(
        m.starts_with("object model holds 2 tensors (\"b\", \"w\")"),
        "{m}"
    );

    match store::fetch(&store, &reference, Want::Model, MIB, 100)
        .await
        .unwrap()
    {
        Loaded::Model(back) => {
            assert_eq!(back.tensors.len(), 2);
            assert_eq!(back.tensors[1], model.tensors[0]);
            assert_eq!(back.metadata, model.metadata);
        }
        other => panic!("expected a model, got {other:?}"),
    }
}

#[tokio::test]
async fn images_load_as_images_and_not_as_tensors() {
    let (_server, _js, store) = bucket().await;
    let img = HostTensor::new(vec![3, 1, 2], vec![0.0, 1.0, 0.2, 0.4, 0.6, 0.8]);
    let d = store::put_tensor(&store, "img.png", &img, "png", "")
        .await
        .unwrap();
    assert_eq!((d.format.as_str(), d.dtype.as_str()), ("png", "u8"));

    let reference = ObjectRef::new("img.png");
    let m = invalid(store::fetch(&store, &reference, Want::Tensor, MIB, 100).await);
    assert_eq!(
        m,
        "object img.png is a PNG image, but this job wants a tensor (.npy or safetensors); \
         store it in one of those formats"
    );
    // One format wanted: "one of those formats" named one.
    let m = invalid(store::fetch(&store, &reference, Want::Model, MIB, 100).await);
    assert_eq!(
        m,
        "object img.png is a PNG image, but this job wants a model (safetensors); store it in \
         that format"
    );
    let loaded = store::fetch(&store, &reference, Want::Image, MIB, 100)
        .await
        .unwrap();
    assert_eq!(tensor(loaded), img);

    // A [H, W] tensor is a one-channel image.
    let grey = HostTensor::new(vec![2, 2], vec![0.0, 0.25, 0.5, 1.0]);
    store::put_tensor(&store, "grey.npy", &grey, "npy", "")
        .await
        .unwrap();
    let loaded = store::fetch(&store, &ObjectRef::new("grey.npy"), Want::Image, MIB, 100).await;
    let loaded = tensor(loaded.unwrap());
    assert_eq!((loaded.shape, loaded.data), (vec![1, 2, 2], grey.data));

    // A [B, C, H, W] tensor is a batch of images, kept as it is; five dimensions are not.
    let batch = HostTensor::new(vec![2, 1, 1, 2], vec![0.1, 0.2, 0.3, 0.4]);
    store::put_tensor(&store, "batch.npy", &batch, "npy", "")
        .await
        .unwrap();
    let loaded = store::fetch(&store, &ObjectRef::new("batch.npy"), Want::Image, MIB, 100).await;
    assert_eq!(tensor(loaded.unwrap()), batch);
    let five = HostTensor::new(vec![1, 2, 1, 1, 2], vec![0.1, 0.2, 0.3, 0.4]);
    store::put_tensor(&store, "five.npy", &five, "npy", "")
        .await
        .unwrap();
    let m = invalid(store::fetch(&store, &ObjectRef::new("five.npy"), Want::Image, MIB, 100).await);
    assert_eq!(
        m,
        "object five.npy is a tensor of shape [1, 2, 1, 1, 2], not an image; give a [C, H, W], \
         [B, C, H, W] or [H, W] tensor, or a PNG or JPEG"
    );
}

#[tokio::test]
async fn put_reader_stores_a_csv_dataset_and_open_needs_the_bucket() {
    let (_server, js, store) = bucket().await;
    let csv = b"f1,f2,label\n0.5,1,0\n2,3.5,1\n";
    let d = store::put_reader(&store, "iris.csv", &mut &csv[..])
        .await
        .unwrap();
    assert_eq!((d.format.as_str(), d.size), ("csv", csv.len() as u64));
    match store::fetch(&store, &ObjectRef::new("iris.csv"), Want::Dataset, MIB, 100).await {
        Ok(Loaded::Dataset(data)) => {
            assert_eq!(data.x.shape, vec![2, 2]);
            assert_eq!(data.x.data, vec![0.5, 1.0, 2.0, 3.5]);
            assert_eq!(data.y, vec![0, 1]);
        }
        other => panic!("expected a dataset, got {other:?}"),
    }

    js.delete_object_store(BUCKET_DATA).await.unwrap();
    let m = invalid(store::open(&js).await.map(|_| ()));
    assert_eq!(
        m,
        "object store KILN_DATA does not exist on this server: run `kiln init`"
    );
}

/// An object's metadata as another client could write it under `name`: `change` applied to
/// a real object's info.
async fn publish_meta(
    js: &jetstream::Context,
    store: &Bucket,
    name: &str,
    change: impl FnOnce(&mut serde_json::Value),
) {
    use base64::Engine as _;
    let mut meta = serde_json::to_value(store.info("real").await.unwrap()).unwrap();
    meta["name"] = name.into();
    change(&mut meta);
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(name);
    js.publish(
        format!("$O.{BUCKET_DATA}.M.{encoded}"),
        serde_json::to_vec(&meta).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A link is followed once, within KILN_DATA; a link to itself, to another link (a loop) or
/// to another bucket is refused (the client's own reader followed a self-link until the
/// worker's stack overflowed, at every redelivery).
#[tokio::test]
async fn links_are_followed_once_and_loops_refused() {
    let (_server, js, store) = bucket().await;
    let t = HostTensor::new(vec![3], vec![1.0, 2.0, 3.0]);
    store::put_tensor(&store, "real", &t, "npy", "")
        .await
        .unwrap();
    let real = store.info("real").await.unwrap();
    store.add_link("alias", &real).await.unwrap();
    let fetched = store::fetch(&store, &ObjectRef::new("alias"), Want::Tensor, MIB, 100).await;
    assert!(
        matches!(fetched, Ok(Loaded::Tensor(ref back)) if *back == t),
        "{fetched:?}"
    );

    let link = |bucket: &str, name: &str| serde_json::json!({ "link": { "bucket": bucket, "name": name }, "max_chunk_size": null });
    publish_meta(&js, &store, "self", |m| {
        m["options"] = link(BUCKET_DATA, "self")
    })
    .await;
    publish_meta(&js, &store, "a", |m| m["options"] = link(BUCKET_DATA, "b")).await;
    publish_meta(&js, &store, "b", |m| m["options"] = link(BUCKET_DATA, "a")).await;
    publish_meta(&js, &store, "away", |m| m["options"] = link("SECRET", "x")).await;
    publish_meta(&js, &store, "bucket", |m| {
        m["options"] = serde_json::json!({"link": {"bucket": BUCKET_DATA}})
    })
    .await;
    // A link whose object is gone says which link.
    publish_meta(&js, &store, "dangling", |m| {
        m["options"] = link(BUCKET_DATA, "nowhere")
    })
    .await;
    for (name, want) in [
        (
            "dangling",
            "object dangling is a link to nowhere, which cannot be read: object \"nowhere\" \
             not found",
        ),
        (
            "self",
            "object self is a link to self, itself a link: kiln follows one link",
        ),
        (
            "a",
            "object a is a link to b, itself a link: kiln follows one link",
        ),
        (
            "away",
            "object away is a link to x in bucket SECRET: kiln reads objects in KILN_DATA only",
        ),
        (
            "bucket",
            "object bucket is a link to the whole bucket KILN_DATA, not to an object: kiln \
             reads one object; name it (in KILN_DATA)",
        ),
    ] {
        let m = invalid(store::fetch(&store, &ObjectRef::new(name), Want::Tensor, MIB, 100).await);
        assert!(m.starts_with(want), "{name}: {m}");
        let m = invalid(store::get_to_writer(&store, name, &mut Vec::new()).await);
        assert!(m.starts_with(want), "{name}: {m}");
    }
}

/// Chunks that never come (purged: the object was put again or deleted while a job read it)
/// end the read after the chunk patience, as an I/O error to retry, instead of holding the job
/// for ever; an object deleted by a client that leaves an empty `mtime` (nats-py) is bad
/// data, not a fault of the connection.
#[tokio::test]
async fn missing_chunks_time_out_and_foreign_metadata_is_invalid() {
    let (_server, js, store) = bucket().await;
    let store = store.with_chunk_patience(std::time::Duration::from_millis(500));
    let t = HostTensor::new(vec![3], vec![1.0, 2.0, 3.0]);
    store::put_tensor(&store, "real", &t, "npy", "")
        .await
        .unwrap();
    let info = store.info("real").await.unwrap();
    js.get_stream(format!("OBJ_{BUCKET_DATA}"))
        .await
        .unwrap()
        .purge()
        .filter(format!("$O.{BUCKET_DATA}.C.{}", info.nuid))
        .await
        .unwrap();
    // Its name still holds it: the chunks are gone for good (aged out, or purged), and the
    // job is answered at once, where it was retried as a connection fault until it was
    // dead-lettered.
    let started = std::time::Instant::now();
    let m = invalid(store::fetch(&store, &ObjectRef::new("real"), Want::Tensor, MIB, 100).await);
    assert_eq!(
        m,
        "object real is corrupt: none of its 1 chunks is stored, though its name still holds \
         it (they aged out with the bucket's maximum age, or were purged); put it again"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // An entry naming its chunks by nothing (another client's) is refused as it is read.
    publish_meta(&js, &store, "no-nuid", |m| m["nuid"] = "".into()).await;
    let m = invalid(store::fetch(&store, &ObjectRef::new("no-nuid"), Want::Tensor, MIB, 100).await);
    assert!(
        m.starts_with("object no-nuid's entry in KILN_DATA names its chunks by \"\""),
        "{m}"
    );

    // Deleted as nats-py deletes (an empty `mtime`, which async-nats does not parse): not
    // found, as an object deleted by kiln or the nats CLI is. Other foreign metadata is
    // invalid.
    publish_meta(&js, &store, "gone", |m| {
        m["deleted"] = true.into();
        m["mtime"] = "".into();
    })
    .await;
    let m = invalid(store::fetch(&store, &ObjectRef::new("gone"), Want::Tensor, MIB, 100).await);
    assert!(
        m.starts_with("object \"gone\" not found in KILN_DATA"),
        "{m}"
    );
    publish_meta(&js, &store, "odd", |m| m["mtime"] = "".into()).await;
    let m = invalid(store::fetch(&store, &ObjectRef::new("odd"), Want::Tensor, MIB, 100).await);
    assert!(
        m.starts_with("object odd's entry in KILN_DATA does not parse"),
        "{m}"
    );
}

/// An empty object has no chunks: read whole at once (no consumer, no wait), and refused as a
/// tensor for what it is.
#[tokio::test]
async fn an_empty_object_is_read_at_once() {
    let (_server, _js, store) = bucket().await;
    store::put_reader(&store, "empty", &mut &b""[..])
        .await
        .unwrap();
    let mut out = Vec::new();
    let got = store::get_to_writer(&store, "empty", &mut out)
        .await
        .unwrap();
    assert_eq!((got.size, out.len()), (0, 0));
    let m = invalid(store::fetch(&store, &ObjectRef::new("empty"), Want::Tensor, MIB, 100).await);
    // Said to be empty (it was "in no format kiln reads"): stored from an empty pipe, say.
    assert_eq!(
        m,
        "object empty is empty, but this job wants a tensor (.npy or safetensors)"
    );
}

/// Messages stored on `subject` (a filter) in the bucket's stream.
async fn stored_on(js: &jetstream::Context, subject: &str) -> u64 {
    let stream = js.get_stream(format!("OBJ_{BUCKET_DATA}")).await.unwrap();
    use futures::TryStreamExt as _;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(subject)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    subjects.iter().map(|(_, n)| *n as u64).sum()
}

/// kiln writes an object's chunks itself, several in flight: what it stores is what the
/// client's own reader reads (digest checked), in full chunks, and a put under the same name
/// removes the chunks of the object it replaces.
#[tokio::test]
async fn a_put_reads_back_through_the_client_and_replaces_what_it_replaces() {
    use tokio::io::AsyncReadExt as _;
    let (_server, js, store) = bucket().await;
    // 11 chunks and a part: more than are ever in flight at once.
    let bytes: Vec<u8> = (0..11 * store::CHUNK_SIZE + 12_345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let put = store::put_reader(&store, "big.bin", &mut &bytes[..])
        .await
        .unwrap();
    assert_eq!(put.size, bytes.len() as u64);
    let first = store.info("big.bin").await.unwrap();
    assert_eq!((first.chunks, first.size), (12, bytes.len()));

    let mut back = Vec::new();
    let mut reader = store.get("big.bin").await.unwrap();
    reader.read_to_end(&mut back).await.unwrap();
    assert!(back == bytes, "the client read back other bytes");
    let chunks = format!("$O.{BUCKET_DATA}.C.{}", first.nuid);
    assert_eq!(stored_on(&js, &chunks).await, 12);

    // Put again, from a reader that yields a few bytes at a time: still full chunks.
    let again = &bytes[..3 * store::CHUNK_SIZE];
    let mut trickle = tokio_util::io::StreamReader::new(futures::stream::iter(
        again
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))),
    ));
    store::put_reader(&store, "big.bin", &mut trickle)
        .await
        .unwrap();
    let second = store.info("big.bin").await.unwrap();
    assert_eq!((second.chunks, second.size), (3, again.len()));
    assert_eq!(stored_on(&js, &chunks).await, 0, "the old chunks stayed");
    let all = format!("$O.{BUCKET_DATA}.C.>");
    assert_eq!(stored_on(&js, &all).await, 3);
    let mut out = Vec::new();
    store::get_to_writer(&store, "big.bin", &mut out)
        .await
        .unwrap();
    assert!(out == again);
}

/// Puts and removals of one name at once leave the chunks of the last object put and no
/// others: each writes its info over the one it read (else reads again), so it removes the
/// chunks of exactly the object it replaced. Two puts at once each removed the chunks of the
/// object both had read, and the first one's stayed under no name.
#[tokio::test(flavor = "multi_thread")]
async fn puts_and_removals_of_one_name_at_once_leave_no_chunks_behind() {
    let (_server, js, store) = bucket().await;
    let all = format!("$O.{BUCKET_DATA}.C.>");
    for round in 0..5 {
        let writers = (0..8u8).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let bytes = vec![w; store::CHUNK_SIZE + 10];
                if w % 4 == 3 {
                    store::remove(&store, "raced.bin").await.unwrap();
                } else {
                    store::put_reader(&store, "raced.bin", &mut &bytes[..])
                        .await
                        .unwrap();
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap();
        }
        let expected = match store.info("raced.bin").await.unwrap() {
            info if info.deleted => 0,
            info => {
                let mut out = Vec::new();
                store::get_to_writer(&store, "raced.bin", &mut out)
                    .await
                    .unwrap();
                assert!(out.iter().all(|b| *b == out[0]) && out.len() == info.size);
                2
            }
        };
        assert_eq!(stored_on(&js, &all).await, expected, "round {round}");
    }
}

/// A put that does not fit leaves nothing behind: the client's put left the chunks it had
/// stored, which filled the bucket for everything after it until they aged out.
#[tokio::test]
async fn a_put_that_does_not_fit_leaves_no_chunks() {
    let server = kiln_testkit::NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut config = Topology::default().data_bucket();
    config.max_bytes = 4 * MIB as i64;
    js.create_object_store(config).await.unwrap();
    let store = store::open(&js).await.unwrap();

    let small = vec![1u8; 1000];
    store::put_reader(&store, "small", &mut &small[..])
        .await
        .unwrap();
    let big = vec![2u8; 10 * MIB as usize];
    let failed = store::put_reader(&store, "big", &mut &big[..]).await;
    match failed {
        Err(DataError::TooLarge(m)) => assert!(
            m.contains("KILN_DATA has no room for it within its --data-max-bytes"),
            "{m}"
        ),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let all = format!("$O.{BUCKET_DATA}.C.>");
    assert_eq!(
        stored_on(&js, &all).await,
        1,
        "only the small object's chunk"
    );
    assert!(store.info("big").await.is_err());

    // The room the failed put took is free again: 3 MiB fit.
    let fits = vec![3u8; 3 * MIB as usize];
    store::put_reader(&store, "fits", &mut &fits[..])
        .await
        .unwrap();
    let mut out = Vec::new();
    store::get_to_writer(&store, "small", &mut out)
        .await
        .unwrap();
    assert!(out == small);
}

/// A writer that holds its first write until [`Gate::open`].
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl Gate {
    fn open(&self) {
        let mut gate = self.0.lock().unwrap();
        gate.0 = true;
        if let Some(waker) = gate.1.take() {
            waker.wake();
        }
    }
}

impl tokio::io::AsyncWrite for Gate {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut gate = self.0.lock().unwrap();
        if !gate.0 {
            gate.1 = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A read whose next chunk does not come looks at the object's info every second: an object
/// put again (or deleted) while a job reads it ends the read at once, not after the chunk
/// patience (20 s by default, which held the job that long before it was retried). The
/// reader is held by its writer after its first chunk; the server's flow control then
/// stops sending the rest, which the put removes.
#[tokio::test]
async fn a_read_stalled_by_a_replaced_object_ends_at_once() {
    let (_server, _js, store) = bucket().await;
    let store = store.with_chunk_patience(std::time::Duration::from_secs(60));
    let bytes = vec![7u8; 8 * MIB as usize];
    for (then, said) in [("put again", "put again"), ("deleted", "deleted")] {
        store::put_reader(&store, "big", &mut &bytes[..])
            .await
            .unwrap();
        let gate = Gate::default();
        let reading = {
            let (store, mut out) = (store.clone(), gate.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let got = store::get_to_writer(&store, "big", &mut out).await;
                (got, started.elapsed())
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        match then {
            "put again" => {
                store::put_reader(&store, "big", &mut &bytes[..1000])
                    .await
                    .unwrap();
            }
            _ => store.delete("big").await.unwrap(),
        }
        gate.open();
        let (got, took) = reading.await.unwrap();
        match got {
            Err(DataError::Io(m)) => assert!(
                m.contains(&format!(
                    "will not come: the object was {said} as it was read"
                )),
                "{m}"
            ),
            other => panic!("{then}: expected Io, got {other:?}"),
        }
        assert!(
            took < std::time::Duration::from_secs(10),
            "{then}: took {took:?}"
        );
    }
}

/// An object measured for a job, then put again larger before it is fetched, never loads as
/// what its reservation did not cover. One of several chunks is refused as it is read (before,
/// the fetch looked at the object's info again and loaded whatever the name held by then);
/// one of a single chunk was read whole to measure it, and loads as those very bytes, without
/// a consumer or a second download.
#[tokio::test]
async fn an_object_put_again_after_it_was_measured_is_refused_not_loaded() {
    let (_server, _js, store) = bucket().await;
    let large = HostTensor::new(vec![1 << 20], vec![0.5; 1 << 20]);
    let fetch = |measured: store::Measured| {
        let store = store.clone();
        async move {
            let reference = ObjectRef::new("x.npy");
            store::fetch_measured(
                &store,
                &reference,
                &measured,
                Want::Tensor,
                MIB * 64,
                1 << 24,
            )
            .await
        }
    };
    let reference = ObjectRef::new("x.npy");
    // Three chunks.
    let medium = HostTensor::new(vec![300_000], vec![1.5; 300_000]);
    store::put_tensor(&store, "x.npy", &medium, "npy", "")
        .await
        .unwrap();
    let measured = store::load_size(&store, &reference, Want::Tensor)
        .await
        .unwrap();
    assert_eq!(measured.load.values, Some(1_200_000));
    store::put_tensor(&store, "x.npy", &large, "npy", "")
        .await
        .unwrap();
    match fetch(measured).await {
        Err(DataError::Io(m)) => assert!(m.contains("the object was put again"), "{m}"),
        other => panic!("expected Io, got {other:?}"),
    }
    // One chunk: the bytes measured.
    let small = HostTensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
    store::put_tensor(&store, "x.npy", &small, "npy", "")
        .await
        .unwrap();
    let measured = store::load_size(&store, &reference, Want::Tensor)
        .await
        .unwrap();
    assert_eq!(measured.load.values, Some(16));
    store::put_tensor(&store, "x.npy", &large, "npy", "")
        .await
        .unwrap();
    assert_eq!(tensor(fetch(measured).await.unwrap()), small);
    // Measured afresh, the new object loads.
    let measured = store::load_size(&store, &reference, Want::Tensor)
        .await
        .unwrap();
    assert_eq!(measured.load.values, Some(4 << 20));
    assert_eq!(tensor(fetch(measured).await.unwrap()), large);
}
