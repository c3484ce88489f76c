//! Every shipped configuration file loads with the real loader, and the documented defaults file
//! says exactly what the defaults are.

use std::path::PathBuf;

use ecs_reloader::config::Config;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_shipped_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(config_dir()).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Config::load(Some(&path), Vec::new())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no configuration files found");
}

#[test]
fn the_documented_defaults_are_the_defaults() {
    let loaded =
        Config::load(Some(&config_dir().join("ecs-reloader.toml")), Vec::new()).expect("loads");
    assert_eq!(loaded, Config::default());
}
