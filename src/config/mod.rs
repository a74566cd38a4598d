//! `flora.toml`: every setting flora reads, with its default, validation and path resolution.
//!
//! All paths in the file are relative to the folder that holds the file. Unknown keys and bad
//! values are errors that name the key and the file.
//!
//! - [`schema`]: the sections and keys, with their defaults;
//! - [`validate`]: parsing and the range of every value;
//! - [`settings`]: a config with the folder it was read from, and the paths it resolves;
//! - [`weights`]: the project's own pretrained weights by name (`[weights.<name>]`);
//! - `default.toml`: the commented default file that `flora init` writes.

pub mod schema;
pub mod settings;
pub mod validate;
pub mod weights;

pub use schema::*;
pub use settings::Settings;

/// The default config file name, looked up in the current folder.
pub const DEFAULT_CONFIG: &str = "flora.toml";

/// The commented default `flora.toml` that `flora init` writes. It parses to `Config::default()`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[train]\nepochz = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("epochz"), "{err:#}");
    }

    #[test]
    fn negative_epochs_is_refused() {
        let err = Config::parse("[train]\nepochs = -1\n").unwrap_err();
        assert!(format!("{err:#}").contains("epochs"), "{err:#}");
    }

    #[test]
    fn mobilenet_keys_are_checked() {
        let err = Config::parse("[train]\nwidth = 0.6\narch = \"mobilenet_v2\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("train.width = 0.6"), "{err:#}");
        let err = Config::parse("[train]\nwidth = 0.5\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("applies to train.arch"),
            "{err:#}"
        );
        let ok = Config::parse("[train]\narch = \"mobilenet_v2\"\nwidth = 0.35\n").unwrap();
        assert_eq!(ok.train.dropout(), 0.2);
        assert_eq!(Config::default().train.dropout(), 0.3);
    }

    #[test]
    fn device_values_are_checked() {
        let err = Config::parse("[train]\ndevice = \"tpu\"\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("tpu"), "{msg}");
        assert!(msg.contains(crate::util::device::CHOICES), "{msg}");
        let ok = Config::parse("[train]\ndevice = \"gpu:1\"\n").unwrap();
        assert_eq!(ok.train.device, crate::util::device::DeviceChoice::Gpu(1));
    }

    #[test]
    fn cosine_schedule_ends_low() {
        let s = LrSchedule::Cosine;
        assert!((s.at(1.0, 0, 100) - 1.0).abs() < 1e-9);
        assert!((s.at(1.0, 100, 100) - 0.01).abs() < 1e-9);
    }
}
