//! Kernel release strings (`uname -r`) parsed into a comparable form.
//!
//! Known kernel issues are fixed at different points upstream and in
//! enterprise distributions, which backport fixes into an old upstream base
//! (RHEL 7 ships "3.10.0" for its whole life; what matters there is the el7
//! build number such as `327.10.1`). So a release is an upstream version plus,
//! when present, the enterprise build it came from.

use std::fmt;

/// An upstream kernel version `major.minor.patch`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// Major version (the `6` of `6.1.0`).
    pub major: u32,
    /// Minor version (the `1` of `6.1.0`).
    pub minor: u32,
    /// Patch level (the `0` of `6.1.0`); 0 when the release omits it.
    pub patch: u32,
}

impl KernelVersion {
    /// A version from its three numbers; `const` so the known-issue table can use it.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What follows the upstream version in a release string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistroBuild {
    /// Nothing after the version: a plain upstream kernel such as `4.4.0`.
    Upstream,
    /// A Red Hat style enterprise build: `3.10.0-327.10.1.el7.x86_64` is
    /// `el: 7`, `build: [327, 10, 1]`. Builds compare lexicographically, so
    /// `[327] < [327, 10, 1] < [514]`.
    Enterprise {
        /// The `N` of the `.elN` tag (7 for RHEL/CentOS 7).
        el: u32,
        /// The dotted build number before the `.elN` tag.
        build: Vec<u32>,
    },
    /// Any other suffix (`91-generic`, `56-amd64`, `fc-v669`): kept for
    /// display; such kernels are judged by their upstream version.
    Other(String),
}

/// A parsed kernel release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRelease {
    /// The release string as given (trimmed).
    pub raw: String,
    /// The upstream version the release is based on.
    pub upstream: KernelVersion,
    /// The distribution build, if any.
    pub distro: DistroBuild,
    /// The distribution package the kernel was built from, when the build
    /// string names one (`Debian 6.1.172-1`): Debian and Ubuntu keep the
    /// stable patch level out of `uname -r` (`6.1.0-48-amd64` is 6.1.172),
    /// so `upstream` was taken from here.
    pub package: Option<String>,
}

/// Why a release string could not be understood. Callers treat an
/// unparsable release conservatively (no kernel fast datapath).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelParseError {
    /// The string was empty or only whitespace.
    #[error("empty kernel release string")]
    Empty,
    /// The string does not start with `major.minor`.
    #[error("kernel release {release:?} does not start with a major.minor version")]
    NoVersion {
        /// The offending release string.
        release: String,
    },
    /// A version component is too large to be a kernel version.
    #[error("kernel release {release:?} has an out-of-range number {component:?}")]
    NumberOutOfRange {
        /// The offending release string.
        release: String,
        /// The component that did not fit.
        component: String,
    },
    /// An `.elN` tag is present but the build number before it is malformed.
    #[error(
        "kernel release {release:?} has an enterprise tag but a malformed build number {build:?}"
    )]
    BadEnterpriseBuild {
        /// The offending release string.
        release: String,
        /// The text found where the build number should be.
        build: String,
    },
}

impl KernelRelease {
    /// Parses a release such as `3.10.0-327.10.1.el7.x86_64`, `4.4.0`,
    /// `5.15.0-91-generic`, `6.1.0-56-amd64` or `6.18.44-fc-v669`.
    /// Total: every input gives `Ok` or `Err`.
    pub fn parse(release: &str) -> Result<KernelRelease, KernelParseError> {
        let raw = release.trim();
        if raw.is_empty() {
            return Err(KernelParseError::Empty);
        }
        // The version is the leading run of digits and dots.
        let version_end = raw
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(raw.len());
        let (version_text, rest) = raw.split_at(version_end);
        let version_text = version_text.trim_end_matches('.');
        let no_version = || KernelParseError::NoVersion {
            release: raw.to_string(),
        };
        let mut numbers = Vec::with_capacity(3);
        for component in version_text.split('.') {
            if component.is_empty() {
                return Err(no_version());
            }
            let number =
                component
                    .parse::<u32>()
                    .map_err(|_| KernelParseError::NumberOutOfRange {
                        release: raw.to_string(),
                        component: component.to_string(),
                    })?;
            numbers.push(number);
        }
        let (major, minor, patch) = match numbers.as_slice() {
            [major, minor] => (*major, *minor, 0),
            [major, minor, patch, ..] => (*major, *minor, *patch),
            _ => return Err(no_version()),
        };
        let upstream = KernelVersion::new(major, minor, patch);
        // Separator between version and suffix: `-`, `+`, `_` or nothing.
        let suffix = rest.trim_start_matches(['-', '+', '_']);
        let distro = if suffix.is_empty() {
            DistroBuild::Upstream
        } else {
            parse_suffix(raw, suffix)?
        };
        Ok(KernelRelease {
            raw: raw.to_string(),
            upstream,
            distro,
            package: None,
        })
    }

    /// Parses `release` (`uname -r`) and refines its upstream version with
    /// the build string (`uname -v`, or Ubuntu's `/proc/version_signature`)
    /// where that names the distribution package: Debian's
    /// `#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-22)` says that
    /// `6.1.0-48-amd64` is upstream 6.1.172. Only a package version with the
    /// same major.minor as the release is taken. Total, like [`Self::parse`].
    pub fn parse_with_build(release: &str, build: &str) -> Result<KernelRelease, KernelParseError> {
        let mut parsed = KernelRelease::parse(release)?;
        if let Some((version, package)) = package_version(build) {
            if version.major == parsed.upstream.major
                && version.minor == parsed.upstream.minor
                && version.patch >= parsed.upstream.patch
            {
                parsed.upstream = version;
                parsed.package = Some(package);
            }
        }
        Ok(parsed)
    }

    /// The el7 build number when this is a RHEL/CentOS 7 kernel.
    pub fn el7_build(&self) -> Option<&[u32]> {
        match &self.distro {
            DistroBuild::Enterprise { el: 7, build } => Some(build),
            _ => None,
        }
    }

    /// A human description: `upstream 3.10.0, el7 build 327.10.1`.
    pub fn describe(&self) -> String {
        match &self.distro {
            DistroBuild::Enterprise { el, build } => {
                format!(
                    "upstream {}, el{} build {}",
                    self.upstream,
                    el,
                    join_build(build)
                )
            }
            _ => match &self.package {
                Some(package) => format!("upstream {}, from {package}", self.upstream),
                None => format!("upstream {}", self.upstream),
            },
        }
    }
}

/// The upstream version and package named in a kernel build string:
/// `... Debian 6.1.172-1 (...)` or Ubuntu's version signature
/// `Ubuntu 5.15.0-91.101-generic 5.15.131`. None when it names neither.
fn package_version(build: &str) -> Option<(KernelVersion, String)> {
    let words: Vec<&str> = build.split_whitespace().collect();
    if let Some(at) = words.iter().position(|w| *w == "Debian") {
        let package = words.get(at + 1)?;
        let version = leading_version(package)?;
        return Some((version, format!("Debian {package}")));
    }
    if words.first() == Some(&"Ubuntu") && words.len() >= 3 {
        let version = leading_version(words.get(2)?)?;
        return Some((version, format!("Ubuntu {}", words.get(1)?)));
    }
    None
}

/// `6.1.172-1` -> 6.1.172; needs all three numbers.
fn leading_version(text: &str) -> Option<KernelVersion> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let mut numbers = text.get(..end)?.split('.').map(|n| n.parse::<u32>().ok());
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next()??;
    Some(KernelVersion::new(major, minor, patch))
}

/// Formats a dotted build number (`[327, 10, 1]` -> `327.10.1`).
pub fn join_build(build: &[u32]) -> String {
    build
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Recognises the `.elN` (or `.elN_M`) tag in a suffix; everything else is `Other`.
fn parse_suffix(raw: &str, suffix: &str) -> Result<DistroBuild, KernelParseError> {
    let tokens: Vec<&str> = suffix.split('.').collect();
    let el_position = tokens
        .iter()
        .position(|token| enterprise_tag(token).is_some());
    let Some(el_position) = el_position else {
        return Ok(DistroBuild::Other(suffix.to_string()));
    };
    let el = tokens
        .get(el_position)
        .and_then(|token| enterprise_tag(token));
    let build_tokens = tokens.get(..el_position).unwrap_or(&[]);
    let bad_build = || KernelParseError::BadEnterpriseBuild {
        release: raw.to_string(),
        build: build_tokens.join("."),
    };
    if build_tokens.is_empty() {
        return Err(bad_build());
    }
    let mut build = Vec::with_capacity(build_tokens.len());
    for token in build_tokens {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_build());
        }
        build.push(token.parse::<u32>().map_err(|_| bad_build())?);
    }
    match el {
        Some(el) => Ok(DistroBuild::Enterprise { el, build }),
        None => Err(bad_build()),
    }
}

/// `el7` -> 7, `el8_5` -> 8; anything else -> None.
fn enterprise_tag(token: &str) -> Option<u32> {
    let digits = token.strip_prefix("el")?;
    let major = digits.split('_').next()?;
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let minor_ok = digits
        .split('_')
        .skip(1)
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !minor_ok {
        return None;
    }
    major.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(el: u32, build: &[u32]) -> DistroBuild {
        DistroBuild::Enterprise {
            el,
            build: build.to_vec(),
        }
    }

    #[test]
    fn parses_release_table() {
        let table: &[(&str, KernelVersion, DistroBuild)] = &[
            (
                "3.10.0-327.10.1.el7.x86_64",
                KernelVersion::new(3, 10, 0),
                ent(7, &[327, 10, 1]),
            ),
            (
                "3.10.0-123.el7.x86_64",
                KernelVersion::new(3, 10, 0),
                ent(7, &[123]),
            ),
            (
                "3.10.0-123.4.4.el7.x86_64",
                KernelVersion::new(3, 10, 0),
                ent(7, &[123, 4, 4]),
            ),
            (
                "4.18.0-348.7.1.el8_5.x86_64",
                KernelVersion::new(4, 18, 0),
                ent(8, &[348, 7, 1]),
            ),
            ("4.4.0", KernelVersion::new(4, 4, 0), DistroBuild::Upstream),
            ("4.4", KernelVersion::new(4, 4, 0), DistroBuild::Upstream),
            (
                "5.15.0-91-generic",
                KernelVersion::new(5, 15, 0),
                DistroBuild::Other("91-generic".into()),
            ),
            (
                "6.1.0-56-amd64",
                KernelVersion::new(6, 1, 0),
                DistroBuild::Other("56-amd64".into()),
            ),
            (
                "6.18.44-fc-v669",
                KernelVersion::new(6, 18, 44),
                DistroBuild::Other("fc-v669".into()),
            ),
            ("6.8.0+", KernelVersion::new(6, 8, 0), DistroBuild::Upstream),
            (
                "6.9.0-rc1",
                KernelVersion::new(6, 9, 0),
                DistroBuild::Other("rc1".into()),
            ),
            (
                "  5.4.0-1\n",
                KernelVersion::new(5, 4, 0),
                DistroBuild::Other("1".into()),
            ),
            (
                "4.19.30-1.el7.x86_64",
                KernelVersion::new(4, 19, 30),
                ent(7, &[1]),
            ),
            (
                "5.10.0.1",
                KernelVersion::new(5, 10, 0),
                DistroBuild::Upstream,
            ),
        ];
        for (release, upstream, distro) in table {
            let parsed = KernelRelease::parse(release).unwrap_or_else(|e| panic!("{release}: {e}"));
            assert_eq!(parsed.upstream, *upstream, "{release}");
            assert_eq!(&parsed.distro, distro, "{release}");
        }
    }

    type ErrorCheck = fn(&KernelParseError) -> bool;

    #[test]
    fn rejects_unparsable_releases() {
        let table: &[(&str, ErrorCheck)] = &[
            ("", |e| matches!(e, KernelParseError::Empty)),
            ("   ", |e| matches!(e, KernelParseError::Empty)),
            ("linux", |e| matches!(e, KernelParseError::NoVersion { .. })),
            ("6", |e| matches!(e, KernelParseError::NoVersion { .. })),
            ("6-generic", |e| {
                matches!(e, KernelParseError::NoVersion { .. })
            }),
            (".6.1", |e| matches!(e, KernelParseError::NoVersion { .. })),
            ("6..1", |e| matches!(e, KernelParseError::NoVersion { .. })),
            ("99999999999.1.0", |e| {
                matches!(e, KernelParseError::NumberOutOfRange { .. })
            }),
            ("3.10.0-.el7.x86_64", |e| {
                matches!(e, KernelParseError::BadEnterpriseBuild { .. })
            }),
            ("3.10.0-abc.el7.x86_64", |e| {
                matches!(e, KernelParseError::BadEnterpriseBuild { .. })
            }),
            ("3.10.0-99999999999.el7", |e| {
                matches!(e, KernelParseError::BadEnterpriseBuild { .. })
            }),
        ];
        for (release, expected) in table {
            match KernelRelease::parse(release) {
                Ok(parsed) => panic!("{release:?} parsed as {parsed:?}"),
                Err(e) => assert!(expected(&e), "{release:?} gave {e:?}"),
            }
        }
    }

    #[test]
    fn versions_and_builds_order_numerically() {
        assert!(KernelVersion::new(3, 9, 0) < KernelVersion::new(3, 12, 0));
        assert!(KernelVersion::new(4, 4, 300) < KernelVersion::new(4, 5, 0));
        let b = |s: &str| {
            KernelRelease::parse(s)
                .unwrap()
                .el7_build()
                .unwrap()
                .to_vec()
        };
        assert!(b("3.10.0-123.el7.x86_64") < b("3.10.0-229.el7.x86_64"));
        assert!(b("3.10.0-327.el7.x86_64") < b("3.10.0-327.10.1.el7.x86_64"));
        assert!(b("3.10.0-327.36.3.el7.x86_64") < b("3.10.0-514.el7.x86_64"));
        assert!(b("3.10.0-99.el7") < b("3.10.0-123.el7"));
    }

    #[test]
    fn describes_releases() {
        let r = KernelRelease::parse("3.10.0-327.10.1.el7.x86_64").unwrap();
        assert_eq!(r.describe(), "upstream 3.10.0, el7 build 327.10.1");
        let r = KernelRelease::parse("6.18.44-fc-v669").unwrap();
        assert_eq!(r.describe(), "upstream 6.18.44");
        assert_eq!(
            KernelRelease::parse("5.15.0-91-generic")
                .unwrap()
                .el7_build(),
            None
        );
    }

    #[test]
    fn build_string_gives_debian_and_ubuntu_patch_levels() {
        let debian = KernelRelease::parse_with_build(
            "6.1.0-48-amd64",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-22)",
        )
        .unwrap();
        assert_eq!(debian.upstream, KernelVersion::new(6, 1, 172));
        assert_eq!(debian.package.as_deref(), Some("Debian 6.1.172-1"));
        assert_eq!(debian.describe(), "upstream 6.1.172, from Debian 6.1.172-1");
        let ubuntu = KernelRelease::parse_with_build(
            "5.15.0-91-generic",
            "Ubuntu 5.15.0-91.101-generic 5.15.131",
        )
        .unwrap();
        assert_eq!(ubuntu.upstream, KernelVersion::new(5, 15, 131));
        // Nothing usable, or another series: the release alone decides.
        for build in [
            "#1 SMP PREEMPT_DYNAMIC Thu Jan  1 00:00:00 UTC 2026",
            "#1 SMP Debian 5.10.209-2 (2024-01-31)",
            "Debian",
            "Debian 6.1",
            "Ubuntu x y",
            "",
        ] {
            let r = KernelRelease::parse_with_build("6.1.0-48-amd64", build).unwrap();
            assert_eq!(r.upstream, KernelVersion::new(6, 1, 0), "{build:?}");
            assert_eq!(r.package, None, "{build:?}");
        }
        assert!(KernelRelease::parse_with_build("garbage", "Debian 6.1.172-1").is_err());
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "\u{0}",
            "é.1",
            "1.é",
            "3.10.0-1.el",
            "3.10.0-1.el7_",
            "3.10.0-1.elx",
            "1.2.3.4.5.6-....el7",
            "-",
            "..",
            "1.1-el7",
        ] {
            let _ = KernelRelease::parse(s);
        }
    }
}
