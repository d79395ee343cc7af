//! Labelled datasets: CSV (features…, label per row) or safetensors with `x` and `y`.

use std::collections::BTreeSet;

use super::error::invalid;
use super::safetensors::{Safetensors, list_names};
use super::{DataError, Format};
use crate::{Dataset, HostTensor};

/// Read a dataset: CSV (one sample a row: features…, label; an optional header row) or
/// safetensors with `x` (samples × features) and `y` (one integer label a sample).
///
/// Labels are non-negative integers (floats with integral values are accepted); a dataset
/// needs at least two classes. Features must be finite numbers.
pub fn decode_dataset(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(format!(
            "{what} is empty; a dataset needs rows of features…, label"
        )));
    }
    let dataset = match Format::sniff(bytes) {
        Some(Format::Csv) => decode_csv(what, bytes, max_elements)?,
        Some(Format::Safetensors) => decode_xy(what, bytes, max_elements)?,
        other => {
            return Err(invalid(format!(
                "{what} is {}, not a dataset; store a CSV (features…, label per row) or a \
                 safetensors file with x and y",
                Format::describe(other)
            )));
        }
    };
    check_classes(what, &dataset.y)?;
    Ok(dataset)
}

fn check_classes(what: &str, y: &[u32]) -> Result<(), DataError> {
    let classes: BTreeSet<u32> = y.iter().copied().collect();
    match classes.first() {
        None => Err(invalid(format!(
            "{what} holds no samples; a dataset needs rows of features…, label"
        ))),
        Some(only) if classes.len() == 1 => Err(invalid(format!(
            "{what} has one class (label {only}): a classifier needs at least two"
        ))),
        Some(_) => Ok(()),
    }
}

/// A label: a non-negative integer that fits u32 (an integral float is accepted).
fn label(value: f64) -> Option<u32> {
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX))
        .then_some(value as u32)
}

/// What a row whose fields hold semicolons, tabs or bars says about its file: not comma-
/// separated (semicolons where a comma is the decimal point, as European spreadsheets save
/// CSV). Empty for any other row.
fn separator_hint(record: &csv::StringRecord) -> String {
    let found = [';', '\t', '|']
        .into_iter()
        .find(|&s| record.iter().any(|field| field.contains(s)));
    match found {
        Some(s) => format!(
            "; its values look separated by {s:?}: kiln reads comma-separated values with a \
             point for decimals (pandas: to_csv(path, sep=',', decimal='.'))"
        ),
        None => String::new(),
    }
}

fn decode_csv(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::StringRecord::new();
    let mut columns = None;
    let mut x = Vec::new();
    let mut y = Vec::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                return Err(invalid(format!(
                    "{what}: line {line} is not valid CSV ({e}); save it as plain UTF-8 \
                     comma-separated text"
                )));
            }
        }
        let line = record.position().map_or(0, csv::Position::line);
        let Some(expected) = columns else {
            if record.len() < 2 {
                return Err(invalid(format!(
                    "{what} has {} column on line {line}: a dataset row is features…, label \
                     (at least 2 columns){}",
                    record.len(),
                    separator_hint(&record)
                )));
            }
            columns = Some(record.len());
            // A header row is names only, or pandas' names for unnamed columns (0, 1, ...)
            // and some names ("0,1,label"). Any other first row of numbers and text is
            // refused: taken for a header, a data row with a typo ("NA") was dropped without
            // a word.
            let text = record
                .iter()
                .position(|field| field.parse::<f64>().is_err());
            match text {
                Some(_) if header(&record) => {}
                Some(column) => {
                    return Err(invalid(format!(
                        "{what}: line {line} mixes numbers and text (column {}: {:?}): a \
                         header row holds names only and a data row numbers only; fix or drop \
                         the row{}",
                        column + 1,
                        &record[column],
                        separator_hint(&record)
                    )));
                }
                None => record_row(what, &record, line, max_elements, &mut x, &mut y)?,
            }
            continue;
        };
        if record.len() != expected {
            return Err(invalid(format!(
                "{what}: line {line} has {} fields, but the first row has {expected}; give \
                 every row the same columns",
                record.len()
            )));
        }
        record_row(what, &record, line, max_elements, &mut x, &mut y)?;
    }
    let features = columns.unwrap_or(1) - 1;
    Ok(Dataset {
        x: HostTensor {
            shape: vec![y.len(), features],
            data: x,
        },
        y,
    })
}

/// Whether a first row holding text is a header: its numbers, if any, are pandas' names for
/// unnamed columns, `0`, `1`, `2`, ... in order.
fn header(record: &csv::StringRecord) -> bool {
    record
        .iter()
        .filter(|field| field.parse::<f64>().is_ok())
        .enumerate()
        .all(|(i, field)| *field == i.to_string())
}

fn record_row(
    what: &str,
    record: &csv::StringRecord,
    line: u64,
    max_elements: u64,
    x: &mut Vec<f32>,
    y: &mut Vec<u32>,
) -> Result<(), DataError> {
    let features = record.len() - 1;
    if (x.len() + features) as u64 > max_elements {
        return Err(DataError::TooLarge(format!(
            "{what} holds more than {max_elements} feature values, over this worker's limit \
             (--max-elements); send a smaller dataset"
        )));
    }
    for (column, field) in record.iter().take(features).enumerate() {
        let column = column + 1;
        let value: f32 = field.parse::<f64>().map_err(|_| {
            invalid(format!(
                "{what}: line {line}, column {column}: {field:?} is not a number; features \
                 must be numbers{}",
                separator_hint(record)
            ))
        })? as f32;
        if !value.is_finite() {
            return Err(invalid(format!(
                "{what}: line {line}, column {column}: {field:?} is not a finite number; fill \
                 in or drop the row"
            )));
        }
        x.push(value);
    }
    let field = &record[features];
    if label(field.parse::<f64>().unwrap_or(-1.0)).is_none() && field.parse::<u64>().is_ok() {
        return Err(invalid(format!(
            "{what}: line {line}, column {}: label {field} is past the 65,536 classes kiln \
             trains (labels are class numbers from 0); number the classes 0 to N-1",
            features + 1
        )));
    }
    let class = field.parse::<f64>().ok().and_then(label).ok_or_else(|| {
        invalid(format!(
            "{what}: line {line}, column {}: label {field:?} is not a class number; a row's \
             last column is its label, a non-negative integer (0, 1, 2, …)",
            features + 1
        ))
    })?;
    y.push(class);
    Ok(())
}

fn decode_xy(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    let file = Safetensors::parse(what, bytes)?;
    let missing = |name: &str| {
        invalid(format!(
            "{what} has no tensor {name:?}: a dataset in safetensors holds x (samples × \
             features) and y (one label a sample); it has {}",
            list_names(&file.names())
        ))
    };
    let x_info = file.info("x").ok_or_else(|| missing("x"))?;
    let y_info = file.info("y").ok_or_else(|| missing("y"))?;
    let (samples, features) = match x_info.shape[..] {
        [samples, features] => (samples, features),
        _ => {
            return Err(invalid(format!(
                "{what}: x has shape {:?}; it must be 2-D (samples × features)",
                x_info.shape
            )));
        }
    };
    // A column vector, [samples, 1], is one label a sample as well (what numpy users have).
    if y_info.shape != [samples] && y_info.shape != [samples, 1] {
        return Err(invalid(format!(
            "{what}: y has shape {:?}, but x has {samples} samples; y must hold one label a \
             sample, [{samples}] or [{samples}, 1]",
            y_info.shape
        )));
    }
    if features == 0 && samples > 0 {
        return Err(invalid(format!(
            "{what}: x has no features (shape {:?}); give each sample at least one",
            x_info.shape
        )));
    }
    let mut budget = max_elements;
    let x = file.tensor(what, "x", &mut budget)?;
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "{what}: x holds a NaN or infinity at sample {}, feature {}; fill in or drop it",
            i / features,
            i % features
        )));
    }
    let mut budget = u64::MAX;
    let labels = file.tensor(what, "y", &mut budget)?;
    let y = labels
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let exact = file.exact_value("y", i).unwrap_or_else(|| v.to_string());
            // A whole number past u32 (or past f32's exact integers) is a label, too large.
            match label(f64::from(v)) {
                Some(class) if exact == class.to_string() || exact == v.to_string() => Ok(class),
                _ if v >= 0.0 && v.fract() == 0.0 && exact.parse::<u64>().is_ok() => {
                    Err(invalid(format!(
                        "{what}: y[{i}] is {exact}, a label past the 65,536 classes kiln \
                         trains (labels are class numbers from 0); number the classes 0 to N-1"
                    )))
                }
                _ => Err(invalid(format!(
                    "{what}: y[{i}] is {exact}, not a class number; labels are non-negative \
                     integers (0, 1, 2, …)"
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dataset { x, y })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::tests::{le, message, safetensors};

    fn dataset(text: &str) -> Result<Dataset, DataError> {
        decode_dataset("d.csv", text.as_bytes(), 1000)
    }

    #[test]
    fn reads_csv_with_and_without_a_header() {
        let d = dataset("f1,f2,label\n1,2,0\n3.5,-4e1,1\n").unwrap();
        assert_eq!(d.x.shape, vec![2, 2]);
        assert_eq!(d.x.data, vec![1.0, 2.0, 3.5, -40.0]);
        assert_eq!(d.y, vec![0, 1]);

        let d = dataset(" 0.5 , 1.0 , 2.0\r\n\r\n1.5, 2.5, 0\r\n").unwrap();
        assert_eq!(d.x.data, vec![0.5, 1.0, 1.5, 2.5]);
        assert_eq!(d.y, vec![2, 0]);
    }

    /// pandas names unnamed columns 0, 1, 2, ...: `DataFrame(X).assign(label=y).to_csv()`
    /// and the same with its index (an empty first name) write headers of numbers and a name.
    #[test]
    fn pandas_headers_of_column_numbers_and_names_are_headers() {
        for text in ["0,1,label\n1.5,2,1\n3,4,0\n", ",0,label\n1.5,2,1\n3,4,0\n"] {
            let d = dataset(text).unwrap();
            assert_eq!(d.x.data, vec![1.5, 2.0, 3.0, 4.0], "{text}");
            assert_eq!(d.y, vec![1, 0], "{text}");
        }
    }

    #[test]
    fn refuses_bad_csv_naming_the_line() {
        // A first row of numbers and text is no header: a data row with a typo.
        for (first, column, field) in [
            ("NA,1.2,0", 1, "NA"),
            ("0x10,2,0", 1, "0x10"),
            ("1,2,y", 3, "y"),
            ("0,2,y", 3, "y"),
        ] {
            assert_eq!(
                message(dataset(&format!("{first}\n3,4,1\n"))),
                format!(
                    "d.csv: line 1 mixes numbers and text (column {column}: {field:?}): a header \
                     row holds names only and a data row numbers only; fix or drop the row"
                )
            );
        }
        assert_eq!(
            message(dataset("a,b,y\n1,2,0\n3,1\n")),
            "d.csv: line 3 has 2 fields, but the first row has 3; give every row the same columns"
        );
        assert_eq!(
            message(dataset("1,2,0\n1,x2,1\n")),
            "d.csv: line 2, column 2: \"x2\" is not a number; features must be numbers"
        );
        let m = message(dataset("1,2,0\nNaN,2,1\n"));
        assert!(
            m.starts_with("d.csv: line 2, column 1: \"NaN\" is not a finite number"),
            "{m}"
        );
        let m = message(dataset("1,2,0\n1,2,-1\n"));
        assert!(
            m.starts_with("d.csv: line 2, column 3: label \"-1\" is not a class number"),
            "{m}"
        );
        let m = message(dataset("1,2,0\n1,2,1.5\n"));
        assert!(m.contains("label \"1.5\""), "{m}");
        assert_eq!(
            message(dataset("1,2,0\n3,4,0.0\n")),
            "d.csv has one class (label 0): a classifier needs at least two"
        );
        let m = message(dataset("1\n2\n"));
        assert!(m.starts_with("d.csv has 1 column on line 1"), "{m}");
        assert!(!m.contains("separated by"), "{m}");
        for (csv, separator) in [
            ("1;2;0\n", "';'"),
            ("1.5\t2\t0\n", "'\\t'"),
            // A comma for decimals splits the values wrongly, into numbers and text.
            ("1,5;2,25;0\n3,5;1,0;1\n", "';'"),
        ] {
            let m = message(dataset(csv));
            assert!(
                m.contains(&format!("its values look separated by {separator}")),
                "{m}"
            );
        }
        let m = message(dataset("a,b,label\n"));
        assert!(m.starts_with("d.csv holds no samples"), "{m}");
        let m = message(dataset(""));
        assert!(m.starts_with("d.csv is empty"), "{m}");
        assert!(matches!(
            decode_dataset("d.csv", b"1,2,0\n3,4,1\n", 3),
            Err(DataError::TooLarge(_))
        ));
    }

    /// A value past f32's range in x is said as such (it was "a NaN or infinity"), as in
    /// every other object; a label past u32 names its value, not its f32 rounding.
    #[test]
    fn safetensors_values_past_their_range_are_named() {
        let x = le(&[1.0f64, 1e39], f64::to_le_bytes);
        let file = safetensors(
            &[
                ("x", "F64", &[2, 1], x),
                ("y", "I64", &[2], le(&[0i64, 1], i64::to_le_bytes)),
            ],
            None,
        );
        let m = message(decode_dataset("d", &file, 100));
        assert!(m.contains("the value 1e39 is beyond f32's range"), "{m}");
        let x = le(&[1.0f32, 2.0], f32::to_le_bytes);
        let file = safetensors(
            &[
                ("x", "F32", &[2, 1], x),
                (
                    "y",
                    "I64",
                    &[2],
                    le(&[0i64, 4_294_967_296], i64::to_le_bytes),
                ),
            ],
            None,
        );
        let m = message(decode_dataset("d", &file, 100));
        assert!(
            m.contains("y[1] is 4294967296, a label past the 65,536"),
            "{m}"
        );
        let m = message(decode_dataset("d.csv", b"1,0\n2,4294967297\n", 100));
        assert!(
            m.contains("label 4294967297 is past the 65,536 classes"),
            "{m}"
        );
        // A fraction f32 rounds to a whole number is not a label (it was taken as 1).
        let file = safetensors(
            &[
                ("x", "F32", &[2, 1], le(&[1.0f32, 2.0], f32::to_le_bytes)),
                (
                    "y",
                    "F64",
                    &[2],
                    le(&[0.0f64, 1.000_000_01], f64::to_le_bytes),
                ),
            ],
            None,
        );
        let m = message(decode_dataset("d", &file, 100));
        assert!(m.contains("y[1] is 1.00000001, not a class number"), "{m}");
    }

    #[test]
    fn reads_safetensors_datasets() {
        let x = le(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], f32::to_le_bytes);
        let file = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "I64", &[3], le(&[0i64, 1, 2], i64::to_le_bytes)),
            ],
            None,
        );
        let d = decode_dataset("d", &file, 100).unwrap();
        assert_eq!(
            (d.x.shape, d.x.data),
            (vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(d.y, vec![0, 1, 2]);

        let float_labels = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "F32", &[3], le(&[1.0f32, 0.0, 1.0], f32::to_le_bytes)),
            ],
            None,
        );
        assert_eq!(
            decode_dataset("d", &float_labels, 100).unwrap().y,
            vec![1, 0, 1]
        );

        // Labels as a column vector, [samples, 1], as numpy users often have them.
        let column = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "I64", &[3, 1], le(&[2i64, 0, 1], i64::to_le_bytes)),
            ],
            None,
        );
        assert_eq!(decode_dataset("d", &column, 100).unwrap().y, vec![2, 0, 1]);
        let wide = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "U8", &[3, 2], vec![0, 1, 1, 0, 0, 1]),
            ],
            None,
        );
        let m = message(decode_dataset("d", &wide, 100));
        assert!(
            m.starts_with("d: y has shape [3, 2], but x has 3 samples; y must hold one label a sample, [3] or [3, 1]"),
            "{m}"
        );

        let one_class = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "U8", &[3], vec![4, 4, 4]),
            ],
            None,
        );
        assert_eq!(
            message(decode_dataset("d", &one_class, 100)),
            "d has one class (label 4): a classifier needs at least two"
        );
        let short_y = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "U8", &[2], vec![0, 1]),
            ],
            None,
        );
        let m = message(decode_dataset("d", &short_y, 100));
        assert!(
            m.starts_with("d: y has shape [2], but x has 3 samples"),
            "{m}"
        );
        let no_y = safetensors(&[("x", "F32", &[3, 2], x)], None);
        let m = message(decode_dataset("d", &no_y, 100));
        assert!(m.starts_with("d has no tensor \"y\""), "{m}");
    }
}
