//! Decoders on arbitrary bytes return errors, never panic; encoders round-trip.

use kiln_data::{DataError, Format, HostTensor, formats};
use proptest::prelude::*;

/// Arbitrary bytes, often behind the first bytes of a format so the decoders get past their
/// magic numbers.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefixes: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x93NUMPY\x01\x00".to_vec(),
        b"\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': False, 'shape': (".to_vec(),
        b"\x89PNG\r\n\x1a\n".to_vec(),
        vec![0xFF, 0xD8, 0xFF],
        [&40u64.to_le_bytes()[..], b"{\""].concat(),
        b"a,b,label\n".to_vec(),
    ];
    (
        proptest::sample::select(prefixes),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(prefix, tail)| [prefix, tail].concat())
}

proptest! {
    #[test]
    fn sniff_never_panics(data in bytes()) {
        let _ = Format::sniff(&data);
    }

    #[test]
    fn read_tensor_never_panics(data in bytes(), key in proptest::option::of("[a-z]{1,3}")) {
        if let Ok(t) = formats::read_tensor("t", &mut &data[..], key.as_deref(), 1 << 16) {
            prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }

    #[test]
    fn decode_image_never_panics(data in bytes()) {
        if let Ok(t) = formats::decode_image("img", &data, 1 << 16, u64::MAX) {
            prop_assert_eq!(t.shape.len(), 3);
        }
    }

    #[test]
    fn decode_dataset_never_panics(data in bytes(), text in "[0-9a-z,.\n\r +-]{0,200}") {
        let _ = formats::decode_dataset("d", &data, 1 << 16);
        if let Ok(d) = formats::decode_dataset("d", text.as_bytes(), 1 << 16) {
            prop_assert_eq!(d.x.shape[0], d.y.len());
            prop_assert_eq!(d.x.data.len(), d.x.shape[0] * d.x.shape[1]);
        }
    }

    #[test]
    fn decode_model_never_panics(data in bytes()) {
        let _ = formats::decode_model("m", &data, 1 << 16);
    }

    #[test]
    fn npy_round_trips(
        (shape, values) in proptest::collection::vec(0usize..5, 0..4).prop_flat_map(|shape| {
            let n = shape.iter().product::<usize>();
            (Just(shape), proptest::collection::vec(any::<f32>(), n))
        })
    ) {
        let tensor = HostTensor::new(shape, values);
        let npy = formats::encode_npy(&tensor);
        prop_assert_eq!(npy_values_offset(&npy) % 64, 0);
        let back = formats::read_tensor("t", &mut &npy[..], None, 1 << 20).unwrap();
        prop_assert_eq!(&back.shape, &tensor.shape);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&back.data), bits(&tensor.data));
    }

    #[test]
    fn png_round_trips_eight_bit_values(
        (c, h, w, levels) in (prop_oneof![Just(1usize), Just(2), Just(3), Just(4)], 1usize..6, 1usize..6)
            .prop_flat_map(|(c, h, w)| (Just(c), Just(h), Just(w), proptest::collection::vec(any::<u8>(), c * h * w)))
    ) {
        let data = levels.iter().map(|&v| f32::from(v) / 255.0).collect();
        let tensor = HostTensor::new(vec![c, h, w], data);
        let png = formats::encode_png(&tensor).unwrap();
        prop_assert_eq!(formats::decode_image("img", &png, 1 << 16, u64::MAX).unwrap(), tensor);
    }
}

fn npy_values_offset(npy: &[u8]) -> usize {
    10 + usize::from(u16::from_le_bytes([npy[8], npy[9]]))
}

#[test]
fn errors_start_with_the_name() {
    for data in [&b""[..], b"\x93NUMPY\x09\x00", b"hello"] {
        match formats::read_tensor("thing.npy", &mut &data[..], None, 10) {
            Err(DataError::Invalid(m)) => assert!(m.starts_with("thing.npy"), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
