//! `kiln kinds`: the job kinds this build runs, with their parameters.

use std::process::ExitCode;

use serde::Serialize;

use crate::cli::Format;

/// One kind in `kiln kinds -o json`.
#[derive(Serialize)]
struct Kind {
    name: &'static str,
    summary: &'static str,
    /// The parameters' description, one per line.
    params: Vec<&'static str>,
}

pub fn run(format: Format) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        let kinds: Vec<Kind> = kiln_kernels::KINDS
            .iter()
            .map(|k| Kind {
                name: k.name,
                summary: k.summary,
                params: k.params_help.lines().collect(),
            })
            .collect();
        super::print_json(&kinds)?;
        return Ok(ExitCode::SUCCESS);
    }
    for kind in kiln_kernels::KINDS {
        println!("{}: {}", kind.name, kind.summary);
        for line in kind.params_help.lines() {
            println!("    {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use kiln_proto::Limits;
    use serde_json::json;

    /// Every dtype a kind's parameters accept is named in its listing, and in its summary line
    /// where that names dtypes at all.
    #[test]
    fn kinds_listing_names_every_dtype_the_kinds_accept() {
        let candidates = ["f32", "tf32", "bf16", "f16", "f64", "fp8", "int8"];
        // As a word: "f16" is not named by "bf16".
        let names = |text: &str, dtype: &str| {
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == dtype)
        };
        for kind in kiln_kernels::KINDS {
            let accepts = |dtype: &str| {
                [json!({ "dtype": dtype }), json!({ "n": 8, "dtype": dtype })]
                    .into_iter()
                    .any(|params| kind.check_params(params, &Limits::UNLIMITED).is_ok())
            };
            let accepted: Vec<&str> = candidates.into_iter().filter(|d| accepts(d)).collect();
            let names_dtypes = candidates.iter().any(|d| names(kind.summary, d));
            for dtype in &accepted {
                assert!(
                    names(kind.params_help, dtype),
                    "{}'s parameters do not list dtype {dtype}",
                    kind.name
                );
                assert!(
                    !names_dtypes || names(kind.summary, dtype),
                    "{}'s summary {:?} leaves out dtype {dtype}",
                    kind.name,
                    kind.summary
                );
            }
        }
        let matmul = kiln_kernels::find("matmul").unwrap();
        assert!(names(matmul.summary, "tf32"), "{}", matmul.summary);
    }
}
