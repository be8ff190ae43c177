//! The committed C header, `include/exitpool_agent.h`, is what cbindgen makes
//! of `src/lib.rs` today: this test regenerates it and fails on any
//! difference. With `EXITPOOL_WRITE_HEADER=1` it writes the new header instead.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml reads");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen understands src/lib.rs")
        .write(&mut generated);
    let path = crate_dir.join("include/exitpool_agent.h");
    if std::env::var_os("EXITPOOL_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("header written");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with src/lib.rs; regenerate it with \
         EXITPOOL_WRITE_HEADER=1 cargo test -p exitpool-agent-ffi --test header",
        path.display()
    );
}
