//! The licence Cargo.toml declares is shipped: one file per SPDX id of the expression, with
//! that licence's text, so a user of the crate or the image can read the terms they got.

#[test]
fn every_declared_licence_has_its_text() {
    let root = env!("CARGO_MANIFEST_DIR");
    let expression = env!("CARGO_PKG_LICENSE");
    let ids: Vec<&str> = expression.split(" OR ").map(str::trim).collect();
    assert_eq!(ids, ["MIT", "Apache-2.0"], "the expression this test knows the texts of");
    for (id, file, marker) in [
        ("MIT", "LICENSE-MIT", "Permission is hereby granted, free of charge"),
        ("Apache-2.0", "LICENSE-APACHE", "Apache License\n                           Version 2.0, January 2004"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_else(|e| panic!("{id}: {file}: {e}"));
        assert!(text.contains(marker), "{file} does not hold the {id} text");
    }
}
