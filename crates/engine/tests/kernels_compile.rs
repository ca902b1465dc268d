//! CI check: every kernel file in `kernels/` compiles with NVRTC for sm_80 and sm_90
//! (the Hopper forward for sm_90a only) without an error or a warning. Needs no GPU,
//! only `libnvrtc.so.13` on the loader path (`.ci/run` installs it from PyPI); skips
//! with a message when it is missing.
#![cfg(feature = "cuda")]

use twinflow_engine::cuda::kernels;

#[test]
fn kernels_compile() {
    if !kernels::nvrtc_present() {
        eprintln!("skipping: NVRTC not found");
        return;
    }
    let (mut failures, mut compiled) = (Vec::new(), Vec::new());
    for arch in ["sm_80", "sm_90"] {
        for (name, _) in kernels::SOURCES {
            // A file for one architecture only (the Hopper forward: sm_90a) is compiled
            // where the device loader would compile it.
            let Some(target) = kernels::target(name, arch) else {
                continue;
            };
            match kernels::compile(name, &target) {
                Ok(c) if c.log.is_empty() => assert!(c.ptx.contains(".entry"), "{name}: no kernel"),
                Ok(c) => failures.push(format!("{name}.cu ({target}) warns:\n{}", c.log)),
                Err(e) => failures.push(e.to_string()),
            }
            compiled.push(*name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for (name, _) in kernels::SOURCES {
        assert!(
            compiled.contains(name),
            "{name}.cu compiled for no architecture"
        );
    }
}

/// Every `kernels/*.cu` file is embedded (a new file cannot be forgotten).
#[test]
fn every_kernel_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
    if !dir.is_dir() {
        // A prebuilt test binary run on another machine (scripts/gpu-check.sh).
        eprintln!("skipping: the source folder {} is not here", dir.display());
        return;
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".cu").map(str::to_string)
        })
        .collect();
    on_disk.sort();
    let embedded: Vec<String> = kernels::SOURCES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(on_disk, embedded);
}
