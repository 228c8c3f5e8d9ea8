//! The documentation stays true to the code.

#[test]
fn example_config_in_docs_is_the_one_the_code_validates() {
    let doc = std::fs::read_to_string("docs/config.example.toml").unwrap();
    assert_eq!(
        doc,
        chat_zinx::config::EXAMPLE_TOML,
        "regenerate docs/config.example.toml from config::EXAMPLE_TOML"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &doc).unwrap();
    chat_zinx::config::check_file(&path).expect("the example is valid");
}

#[test]
fn every_config_key_is_documented_with_its_variable() {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    for k in chat_zinx::config::KEYS {
        assert!(
            doc.contains(&format!("`{}`", k.key)),
            "docs/configuration.md lacks {}",
            k.key
        );
        let var = chat_zinx::config::env_var_name(k.key);
        assert!(doc.contains(&var), "docs/configuration.md lacks {var}");
    }
}

#[test]
fn readme_test_command_is_what_ci_runs() {
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(ci.contains("exec scripts/test"));
    assert!(
        readme.contains("\nscripts/test\n"),
        "the README shows scripts/test as a command"
    );
    assert!(readme.contains("\ncargo run --release\n"));
}
