#![warn(missing_docs, unreachable_pub)]
//! kiln's user data: tensors, images and datasets in the formats people have them in, and the
//! `KILN_DATA` object store that carries them to and from workers.
//!
//! - [`HostTensor`]: an f32 tensor in host memory (shape + row-major values), what every
//!   decoder produces and every encoder takes.
//! - [`formats`]: `.npy`, safetensors, PNG/JPEG and CSV, told apart by content
//!   ([`Format::sniff`]), never by name. Every error is a [`DataError`] whose message starts
//!   with the data's name and says what to do; it converts into a job's
//!   [`kiln_proto::JobError`] (bad data fails the job, a failed read is retried).
//! - [`store`]: the object store bucket: [`store::fetch`] streams a stored object into a
//!   tensor (checking its size, digest and element count first), [`store::put_tensor`] stores
//!   one.
//!
//! ```
//! use kiln_data::{Format, HostTensor, formats};
//!
//! let tensor = HostTensor::new(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
//! let npy = formats::encode_npy(&tensor);
//! assert_eq!(Format::sniff(&npy), Some(Format::Npy));
//!
//! let back = formats::read_tensor("weights.npy", &mut &npy[..], None, 1 << 20)?;
//! assert_eq!(back, tensor);
//!
//! // Over the element limit: refused from the header, before reading a value.
//! let refused = formats::read_tensor("weights.npy", &mut &npy[..], None, 4);
//! assert!(matches!(refused, Err(kiln_data::DataError::TooLarge(_))));
//! # Ok::<(), kiln_data::DataError>(())
//! ```

pub mod formats;
pub mod store;
mod tensor;

pub use formats::{DataError, Format};
pub use store::{Loaded, StoredObject, Want};
pub use tensor::{Dataset, HostTensor, Model};
