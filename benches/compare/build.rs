//! Builds librdkafka's own benchmark tool, `examples/rdkafka_performance.c`, from the
//! librdkafka sources that rdkafka-sys unpacks and builds (never copied into this
//! repository), and links it against that same static librdkafka. The binary's path reaches
//! the crate as `RDKAFKA_PERFORMANCE_BIN` (empty when it could not be built: the client is
//! then reported as unavailable instead of failing the whole build).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_RDKAFKA_ROOT");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    match build(&out) {
        Ok(bin) => println!("cargo:rustc-env=RDKAFKA_PERFORMANCE_BIN={}", bin.display()),
        Err(e) => {
            println!("cargo:warning=rdkafka_performance not built: {e}");
            println!("cargo:rustc-env=RDKAFKA_PERFORMANCE_BIN=");
        }
    }
}

fn build(out: &Path) -> Result<PathBuf, String> {
    // rdkafka-sys (links = "rdkafka") says where it built librdkafka: `cargo:root=...`, the
    // unpacked source tree with `src/librdkafka.a` built in place.
    let root = PathBuf::from(
        std::env::var("DEP_RDKAFKA_ROOT")
            .map_err(|_| "DEP_RDKAFKA_ROOT is not set (rdkafka-sys built no librdkafka?)")?,
    );
    let lib = root.join("src").join("librdkafka.a");
    if !lib.is_file() {
        return Err(format!("{} is missing", lib.display()));
    }
    let source = root.join("examples").join("rdkafka_performance.c");
    let source = if source.is_file() {
        source
    } else {
        registry_copy().ok_or("examples/rdkafka_performance.c not found")?
    };
    println!("cargo:rerun-if-changed={}", source.display());
    let bin = out.join("rdkafka_performance");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .arg("-O2")
        .arg("-g")
        .arg(format!("-I{}", root.join("src").display()))
        .arg(format!("-I{}", root.display()))
        .arg(&source)
        .arg("-o")
        .arg(&bin)
        .arg(&lib)
        // librdkafka is built with zstd (rdkafka-sys's `zstd` feature): link the same static
        // libzstd that zstd-sys built for it.
        .args(zstd_lib())
        .args(["-lm", "-ldl", "-lpthread", "-lrt"])
        .status()
        .map_err(|e| format!("{cc}: {e}"))?;
    if !status.success() {
        return Err(format!("{cc} failed ({status})"));
    }
    Ok(bin)
}

/// The same file in the crates.io package of rdkafka-sys
/// (`~/.cargo/registry/src/*/rdkafka-sys-*/librdkafka/examples/`).
fn registry_copy() -> Option<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok()?;
    for index in std::fs::read_dir(home.join("registry").join("src"))
        .ok()?
        .flatten()
    {
        for krate in std::fs::read_dir(index.path()).ok()?.flatten() {
            let name = krate.file_name();
            if name.to_string_lossy().starts_with("rdkafka-sys-4.10") {
                let p = krate
                    .path()
                    .join("librdkafka/examples/rdkafka_performance.c");
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// zstd-sys's static libzstd (`cargo:root=...` of the `zstd` links key), when it built one.
fn zstd_lib() -> Option<PathBuf> {
    let lib = PathBuf::from(std::env::var("DEP_ZSTD_ROOT").ok()?).join("libzstd.a");
    lib.is_file().then_some(lib)
}
