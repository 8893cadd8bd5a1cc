//! `[[profiles]]` and `include`: one point list per device model, written once.
//!
//! A battery room holds 20 to 40 identical racks; repeating each rack's point list in every
//! `[[devices]]` is where typos hide. A profile is a named point list; a device that says
//! `profile = "rack-bms"` gets its points, and its own `[[devices.points]]` add to them or
//! replace one by id. `include = ["profiles/*.toml"]` reads profile files (relative to the
//! configuration file) so that a site keeps one file per device model; such a file holds
//! `[[profiles]]` and nothing else. Every problem inside a profile names the profile and, for an
//! included one, its file, because the same profile is shared by many devices and the operator
//! has to find the one place to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::points::RawPoint;
use super::validate::Validator;
use super::Problem;
use crate::decode::Point;

/// One `[[profiles]]` entry, validated: a named point list.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `id`: `[a-z0-9-]+`, unique across the file and every included file; what a device's
    /// `profile` names.
    pub id: String,
    /// The included file it came from, as the `include` pattern spells its directory
    /// (`profiles/rack.toml`); `None` for a profile written in the configuration file itself.
    pub file: Option<String>,
    /// `[[profiles.points]]`: the same keys as `[[devices.points]]`.
    pub points: Arc<[Point]>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawProfile {
    id: Option<String>,
    points: Vec<RawPoint>,
}

/// What an included file may hold: profiles only.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct RawProfileFile {
    profiles: Vec<RawProfile>,
}

/// The largest included file read. An included file is a few profiles (kilobytes); anything
/// bigger is a wrong path, and `include = ["/dev/zero"]` must be an error, not a process that
/// reads until allocation fails.
pub(super) const MAX_INCLUDE: u64 = crate::files::MAX_SMALL;

/// A raw profile and the included file it came from.
pub(super) type Sourced = (RawProfile, Option<String>);

/// Reads every file the `include` patterns name, relative to `base` (the configuration file's
/// directory), in pattern order and, within a glob, by file name. Problems (a pattern that
/// matches nothing, an unreadable file, bad TOML, anything but `[[profiles]]`) name the file.
pub(super) fn read_includes(
    patterns: &[String],
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<Sourced> {
    let mut out = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let at = format!("include[{i}]");
        let files = match expand(pattern, base) {
            Ok(f) if f.is_empty() => {
                problems.push(Problem {
                    path: at,
                    message: format!("{pattern:?} matches no file (relative to {})", shown(base)),
                });
                continue;
            }
            Ok(f) => f,
            Err(message) => {
                problems.push(Problem { path: at, message });
                continue;
            }
        };
        for (name, path) in files {
            match read_file(&path) {
                Ok(profiles) => out.extend(profiles.into_iter().map(|p| (p, Some(name.clone())))),
                Err(message) => problems.push(Problem {
                    path: name.clone(),
                    message,
                }),
            }
        }
    }
    out
}

fn shown(base: &Path) -> String {
    if base.as_os_str().is_empty() {
        ".".into()
    } else {
        base.display().to_string()
    }
}

/// The files one pattern names: `(name as written, path to open)`. Wildcards (`*`, `?`) are
/// allowed in the file name only, which is all "one file per device model" needs.
fn expand(pattern: &str, base: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let written = Path::new(pattern);
    let name = written
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{pattern:?} names no file"))?;
    let dir_written = written.parent().unwrap_or(Path::new(""));
    if dir_written.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "{pattern:?}: wildcards are allowed in the file name only"
        ));
    }
    let dir = base.join(dir_written);
    let join = |n: &str| -> (String, PathBuf) {
        let shown = dir_written.join(n).display().to_string();
        (shown, dir.join(n))
    };
    if !name.contains(['*', '?']) {
        return Ok(vec![join(name)]);
    }
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("{pattern:?}: cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| wildcard(name.as_bytes(), n.as_bytes()))
        .collect();
    names.sort();
    Ok(names.iter().map(|n| join(n)).collect())
}

/// `*` matches any run of characters, `?` one; anything else itself. Iterative, so a hostile
/// pattern costs at most pattern × name steps.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// An included file's text: a regular file (a device or a FIFO would be read forever or block
/// on open) of at most [`MAX_INCLUDE`] bytes, checked while reading, not only by its size.
fn read_text(path: &Path) -> Result<String, String> {
    const WHAT: &str = "(an included file holds [[profiles]])";
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file {WHAT}"));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let bytes = crate::files::read_capped(file, MAX_INCLUDE)
        .map_err(|e| format!("cannot read: {e}"))?
        .ok_or_else(|| format!("larger than {MAX_INCLUDE} bytes {WHAT}"))?;
    String::from_utf8(bytes)
        .map_err(|_| "cannot read: stream did not contain valid UTF-8".to_string())
}

fn read_file(path: &Path) -> Result<Vec<RawProfile>, String> {
    let text = read_text(path)?;
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(&text);
    let raw: RawProfileFile = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| e.to_string().trim().replace('\n', "\n    "))?;
    if !unknown.is_empty() {
        return Err(format!(
            "{}: an included file holds [[profiles]] only (with the keys of [[devices.points]])",
            unknown
                .iter()
                .map(|u| super::validate::display_path(u))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(raw.profiles)
}

impl Validator {
    /// Every profile, from the configuration file and the included ones. A profile's points
    /// are validated once here, not once per device that uses it, and every problem in them
    /// says which profile and which file.
    pub(super) fn profiles(&mut self, raw: Vec<Sourced>) -> BTreeMap<String, Profile> {
        let mut out: BTreeMap<String, Profile> = BTreeMap::new();
        for (i, (p, file)) in raw.into_iter().enumerate() {
            let first = self.problems.len();
            let label = match &p.id {
                Some(id) if !id.is_empty() => id.clone(),
                _ => i.to_string(),
            };
            let at = format!("profiles[{label}]");
            let id = self.id(&format!("{at}.id"), p.id, &['-']);
            let mut points = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (j, raw_point) in p.points.into_iter().enumerate() {
                let point = self.point(&format!("{at}.points[{j}]"), raw_point, false);
                if !point.id.is_empty() && !seen.insert(point.id.clone()) {
                    self.problem(
                        format!("{at}.points[{j}].id"),
                        format!("duplicate point id {:?} in profile {id:?}", point.id),
                    );
                }
                points.push(point);
            }
            if points.is_empty() {
                self.problem(
                    format!("{at}.points"),
                    format!("profile {id:?} has no points"),
                );
            }
            if let Some(before) = out.get(&id).filter(|_| !id.is_empty()) {
                let there = match &before.file {
                    Some(f) => format!("in {f}"),
                    None => "in the configuration file".into(),
                };
                self.problem(
                    format!("{at}.id"),
                    format!("duplicate profile id {id:?} (also {there})"),
                );
            }
            if let Some(f) = &file {
                for problem in &mut self.problems[first..] {
                    problem.message.push_str(&format!(" (in {f})"));
                }
            }
            out.entry(id.clone()).or_insert(Profile {
                id,
                file,
                points: points.into(),
            });
        }
        out
    }
}

/// A device's points: its profile's, in the profile's order, with each of the device's own
/// points replacing the profile point of the same id in place, and the others appended in the
/// device's order. A device that adds nothing shares its profile's list.
pub fn merge(profile: &Arc<[Point]>, own: Vec<Point>) -> Arc<[Point]> {
    if own.is_empty() {
        return Arc::clone(profile);
    }
    let mut points: Vec<Point> = profile.to_vec();
    for p in own {
        match points.iter_mut().find(|q| q.id == p.id) {
            Some(slot) => *slot = p,
            None => points.push(p),
        }
    }
    points.into()
}

#[cfg(test)]
mod tests {
    use super::super::validate::parse_at;
    use super::super::{Config, Role};
    use super::*;

    const HEAD: &str = "[site]\nid = \"s\"\ngateway = \"g\"\n";

    const RACK: &str = "[[profiles]]\nid = \"rack-bms\"\n\
        [[profiles.points]]\nid = \"cell_temp_max\"\naddress = 116\ntype = \"i16\"\nscale = 0.1\n\
        [[profiles.points]]\nid = \"soc\"\naddress = 132\n";

    fn device(id: &str, profile: &str, own: &str) -> String {
        format!(
            "[[devices]]\nid = \"{id}\"\nzone = \"z\"\naddress = \"127.0.0.1:5020\"\n\
             profile = \"{profile}\"\n{own}"
        )
    }

    /// A configuration directory: the main file's text, and included files by name.
    fn load(main: &str, files: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        parse_at(main, vec![], Role::Gateway, dir.path())
            .map_err(|ps| ps.into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_device_gets_its_profiles_points_and_its_own_add_or_replace_by_id() {
        let own = "[[devices.points]]\nid = \"soc\"\naddress = 140\n\
                   [[devices.points]]\nid = \"extra\"\naddress = 150\n";
        let main = format!(
            "{HEAD}{RACK}{}{}",
            device("r1", "rack-bms", ""),
            device("r2", "rack-bms", own)
        );
        let cfg = load(&main, &[]).expect("valid");
        let ids = |d: usize| -> Vec<(String, u16)> {
            cfg.devices[d]
                .points
                .iter()
                .map(|p| (p.id.clone(), p.address))
                .collect()
        };
        assert_eq!(ids(0), [("cell_temp_max".into(), 116), ("soc".into(), 132)]);
        assert_eq!(
            ids(1),
            [
                ("cell_temp_max".into(), 116),
                ("soc".into(), 140),
                ("extra".into(), 150)
            ]
        );
        assert_eq!(cfg.devices[1].profile.as_deref(), Some("rack-bms"));
        assert_eq!(cfg.devices[1].points[0].scale, 0.1);
    }

    #[test]
    fn included_profiles_are_read_relative_to_the_config_file_in_name_order() {
        let main = format!(
            "include = [\"profiles/*.toml\"]\n{HEAD}{}{}",
            device("r1", "rack-bms", ""),
            device("u1", "ups", "")
        );
        let ups =
            "[[profiles]]\nid = \"ups\"\n[[profiles.points]]\nid = \"on_battery\"\naddress = 200\n";
        let cfg = load(
            &main,
            &[
                ("profiles/b-ups.toml", ups),
                ("profiles/a-rack.toml", RACK),
                ("profiles/notes.txt", "x"),
            ],
        )
        .expect("valid");
        let files: Vec<(&str, Option<&str>)> = cfg
            .profiles
            .iter()
            .map(|p| (p.id.as_str(), p.file.as_deref()))
            .collect();
        assert_eq!(
            files,
            [
                ("rack-bms", Some("profiles/a-rack.toml")),
                ("ups", Some("profiles/b-ups.toml"))
            ]
        );
        assert_eq!(cfg.devices[1].points[0].id, "on_battery");
    }

    /// A path to a device or a huge file (a typo, or a hostile file) must cost a clear error,
    /// not memory: `/dev/zero` would otherwise be read until allocation fails.
    #[test]
    fn an_include_of_a_device_or_an_oversized_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Sparse: 4 MiB + 1 byte of zeros on disk costs nothing.
        let big = std::fs::File::create(dir.path().join("big.toml")).expect("create");
        big.set_len(MAX_INCLUDE + 1).expect("set_len");
        let main = format!("include = [\"/dev/zero\", \"big.toml\"]\n{HEAD}");
        let errs: Vec<String> = parse_at(&main, vec![], Role::Gateway, dir.path())
            .expect_err("refused")
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "/dev/zero: not a regular file (an included file holds [[profiles]])",
                "big.toml: larger than 4194304 bytes (an included file holds [[profiles]])",
                "devices: no [[devices]]: there is nothing to watch",
            ]
        );
    }

    #[test]
    fn every_problem_in_an_included_profile_names_the_profile_and_the_file() {
        let bad = "[[profiles]]\nid = \"rack-bms\"\n\
            [[profiles.points]]\nid = \"a\"\naddress = 1\n\
            [[profiles.points]]\nid = \"b\"\naddress = 2\ntype = \"u17\"\n\
            [[profiles.points]]\nid = \"a\"\naddress = 3\n";
        let main = format!(
            "include = [\"profiles/rack.toml\"]\n{HEAD}{}",
            device("r1", "rack-bms", "")
        );
        let errs = load(&main, &[("profiles/rack.toml", bad)]).expect_err("invalid");
        assert_eq!(
            errs,
            [
                "profiles[rack-bms].points[1].type: unknown type \"u17\" (expected u16, i16, u32, i32, f32, u64, i64, f64 or bool) (in profiles/rack.toml)",
                "profiles[rack-bms].points[2].id: duplicate point id \"a\" in profile \"rack-bms\" (in profiles/rack.toml)",
            ]
        );
    }

    #[test]
    fn an_unknown_profile_lists_the_known_ones() {
        let main = format!("{HEAD}{RACK}{}", device("r1", "rack", ""));
        assert_eq!(
            load(&main, &[]).expect_err("invalid"),
            ["devices[0].profile: no profile \"rack\"; known: rack-bms"]
        );
    }

    #[test]
    fn a_profile_id_defined_twice_across_files_is_refused_naming_both() {
        let main = format!(
            "include = [\"p/*.toml\"]\n{HEAD}{RACK}{}",
            device("r1", "rack-bms", "")
        );
        let errs = load(&main, &[("p/one.toml", RACK)]).expect_err("invalid");
        assert_eq!(
            errs,
            ["profiles[rack-bms].id: duplicate profile id \"rack-bms\" (also in the configuration file) (in p/one.toml)"]
        );
    }

    #[test]
    fn an_included_file_holding_anything_but_profiles_is_an_error_naming_it() {
        let main = format!(
            "include = [\"p/*.toml\"]\n{HEAD}{}",
            device("r1", "rack-bms", "")
        );
        let stray = format!("{RACK}[[devices]]\nid = \"x\"\n");
        let errs = load(&main, &[("p/rack.toml", &stray)]).expect_err("invalid");
        assert_eq!(
            errs,
            [
                "p/rack.toml: devices: an included file holds [[profiles]] only (with the keys of [[devices.points]])",
                "devices[0].profile: no profile \"rack-bms\"; known: (none)",
            ]
        );
    }

    #[test]
    fn includes_that_match_nothing_or_do_not_parse_are_errors_naming_the_file() {
        let main = format!(
            "include = [\"none/*.toml\", \"p/bad.toml\", \"*/x.toml\"]\n{HEAD}{RACK}{}",
            device("r1", "rack-bms", "")
        );
        let errs = load(
            &main,
            &[("none/readme", ""), ("p/bad.toml", "[[profiles]\n")],
        )
        .expect_err("invalid");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("include[0]: \"none/*.toml\" matches no file"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("p/bad.toml: TOML parse error at line 1"),
            "{errs:?}"
        );
        assert_eq!(
            errs[2],
            "include[2]: \"*/x.toml\": wildcards are allowed in the file name only"
        );
    }

    #[test]
    fn wildcards_match_as_shells_do() {
        for (p, n, want) in [
            ("*.toml", "rack.toml", true),
            ("*.toml", "rack.toml.bak", false),
            ("r?ck*", "rack-bms.toml", true),
            ("*a*b*", "xaxxbx", true),
            ("*a*b", "xaxxbx", false),
            ("rack.toml", "rack.toml", true),
            ("", "x", false),
        ] {
            assert_eq!(wildcard(p.as_bytes(), n.as_bytes()), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn devices_of_one_gateway_must_agree_on_connections() {
        let main = format!(
            "{HEAD}{RACK}{}{}",
            device("r1", "rack-bms", "connections = 2\n"),
            device("r2", "rack-bms", "connections = 3\n")
        );
        assert_eq!(
            load(&main, &[]).expect_err("invalid"),
            ["devices[1].connections: 3 but devices[0] on the same address \"127.0.0.1:5020\" says 2: the devices of one gateway share its connections and must agree"]
        );
    }

    #[test]
    fn connections_is_for_modbus_tcp_and_between_1_and_64() {
        let rtu = "[[devices]]\nid = \"b\"\nzone = \"z\"\ntransport = \"modbus-rtu-over-tcp\"\n\
                   address = \"10.0.0.1:4001\"\nconnections = 2\nprofile = \"rack-bms\"\n";
        let main = format!(
            "{HEAD}{RACK}{}{rtu}",
            device("r1", "rack-bms", "connections = 0\n")
        );
        assert_eq!(
            load(&main, &[]).expect_err("invalid"),
            [
                "devices[0].connections: 0 is out of range (1-64)",
                "devices[1].connections: only modbus-tcp devices share connections (a serial bus or device server is one line)",
            ]
        );
    }
}
