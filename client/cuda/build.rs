//! Builds the reconstruction kernels from `kernels/` with clang, which every zdn build already needs
//! (rocksdb): no CUDA toolkit is involved.
//!
//! * `$OUT_DIR/reconstruct.ptx`: the GPU code, PTX for sm_70 (PTX ISA 6.0), which the driver compiles
//!   for the GPU it runs on (Volta and everything after it: Ampere, Hopper, Blackwell). Built with
//!   `-ffp-contract=off`; the kernels use `mul.rn`/`add.rn`, which ptxas never fuses either.
//! * `libzdn_cuda_emulate.a`: the same per-octet code built for the host, which only the unit tests
//!   call (src/emulate.rs); a binary that does not call it links none of it.
//!
//! The compiler is `clang` / `clang++`, or `$ZDN_CLANG` / `$ZDN_CLANGXX`.

use std::path::PathBuf;
use std::process::Command;

const SOURCES: [&str; 3] = [
    "kernels/reconstruct.cuh",
    "kernels/reconstruct.cu",
    "kernels/emulate.cpp",
];

fn main() -> Result<(), String> {
    for s in SOURCES {
        println!("cargo:rerun-if-changed={s}");
    }
    println!("cargo:rerun-if-env-changed=ZDN_CLANG");
    println!("cargo:rerun-if-env-changed=ZDN_CLANGXX");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let clang = std::env::var("ZDN_CLANG").unwrap_or_else(|_| "clang".into());
    let clangxx = std::env::var("ZDN_CLANGXX").unwrap_or_else(|_| "clang++".into());

    let ptx = out.join("reconstruct.ptx");
    let result = Command::new(&clang)
        .args([
            "-x",
            "cuda",
            "--cuda-device-only",
            "--cuda-gpu-arch=sm_70",
            "-nocudainc",
            "-nocudalib",
            "-O3",
            "-ffp-contract=off",
            "-fno-fast-math",
            "-Wall",
            "-Werror",
            "-S",
            "kernels/reconstruct.cu",
            "-o",
        ])
        .arg(&ptx)
        .output()
        .map_err(|e| {
            format!(
                "zdn-cuda builds its GPU kernels with clang (NVPTX target), and `{clang}` could not \
                 be run: {e}. Install clang (scripts/setup.sh) or set ZDN_CLANG."
            )
        })?;
    if !result.status.success() {
        return Err(format!(
            "{clang} failed to build kernels/reconstruct.cu to PTX:\n{}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }

    cc::Build::new()
        .cpp(true)
        .compiler(&clangxx)
        .cpp_link_stdlib(None)
        .file("kernels/emulate.cpp")
        .flag("-std=c++17")
        .flag("-ffp-contract=off")
        .flag("-fno-fast-math")
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .warnings_into_errors(true)
        .try_compile("zdn_cuda_emulate")
        .map_err(|e| format!("building kernels/emulate.cpp with {clangxx}: {e}"))?;
    Ok(())
}
