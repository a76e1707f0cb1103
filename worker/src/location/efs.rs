//! `efs://FS_ID[/PATH][?az=ZONE]`: an Amazon EFS file system named by its ID, as DataSync
//! names it.
//!
//! The ID is resolved with the EFS API (region, credentials and `--endpoint-url` as for S3):
//! DescribeFileSystems says whether it exists and is `available`, DescribeMountTargets where
//! it can be reached. [`choose`] picks the mount target in the agent's availability zone
//! (`?az=` or `FERRY_AVAILABILITY_ZONE`), else any available one, since cross-zone traffic
//! works but costs. The file system is then spoken to over NFS on port 2049 of that target.
//!
//! EFS speaks only NFSv4.0 and 4.1: [`open`] resolves the ID, so that every mistake in it gets
//! its one-line answer, then opens the NFS backend over NFSv4.1 at the target's address, with
//! the file system's root as the export.

use std::time::Duration;

use aws_sdk_efs::config::retry::RetryConfig;
use aws_sdk_efs::config::timeout::TimeoutConfig;
use aws_sdk_efs::config::Region;
use aws_sdk_efs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_efs::types::LifeCycleState;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::S3Settings;

use super::nfs::url::{NfsUrl, Version};
use super::nfs::NfsLocation;

/// The port every EFS mount target serves NFS on (no portmapper).
pub const NFS_PORT: u16 = 2049;

/// A parsed `efs://` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EfsUrl {
    pub fs_id: String,
    /// The directory inside the file system, without leading or trailing slashes.
    pub path: String,
    /// The availability zone to prefer for the mount target.
    pub az: Option<String>,
}

impl EfsUrl {
    pub fn parse(uri: &str) -> Result<EfsUrl, String> {
        let rest = uri.strip_prefix("efs://").ok_or_else(|| format!("{uri}: not an efs:// URI"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (fs_id, path) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_id = fs_id.len() > 3 && fs_id.starts_with("fs-") && fs_id[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_id {
            return Err(format!("{uri}: '{fs_id}' is not an EFS file system ID (they look like fs-0123456789abcdef0: efs://FS_ID/PATH)"));
        }
        let path = path.trim_matches('/');
        if path.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!("{uri}: the path may not contain '.' or '..' components"));
        }
        let mut az = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("az", zone)) if !zone.is_empty() => az = Some(zone.to_string()),
                _ => return Err(format!("{uri}: unknown option '{pair}' (the one option is az=ZONE, the availability zone to reach it in)")),
            }
        }
        Ok(EfsUrl { fs_id: fs_id.to_string(), path: path.to_string(), az })
    }
}

/// One mount target as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountTarget {
    pub id: String,
    pub ip: Option<String>,
    pub az: Option<String>,
    pub state: String,
}

/// Picks where to reach file system `url` (in state `fs_state`) among `targets`: an available
/// target in zone `az` when one is given and has one, else the first available one.
pub fn choose<'a>(url: &EfsUrl, uri: &str, fs_state: &str, targets: &'a [MountTarget], az: Option<&str>) -> Result<&'a MountTarget, FerryError> {
    if fs_state != "available" {
        return Err(FerryError::config(format!("{uri}: file system {} is {fs_state}, not available (wait until it is available, or check the ID)", url.fs_id)));
    }
    let usable: Vec<&MountTarget> = targets.iter().filter(|t| t.state == "available" && t.ip.is_some()).collect();
    if usable.is_empty() {
        let seen = if targets.is_empty() {
            "it has none".to_string()
        } else {
            targets.iter().map(|t| format!("{} is {}", t.id, t.state)).collect::<Vec<_>>().join(", ")
        };
        return Err(FerryError::config(format!(
            "{uri}: file system {} has no available mount target ({seen}); create one in the agents' VPC and availability zone",
            url.fs_id
        )));
    }
    Ok(az.and_then(|zone| usable.iter().find(|t| t.az.as_deref() == Some(zone))).unwrap_or(&usable[0]))
}

fn api_error<E>(op: &str, url: &EfsUrl, uri: &str, region: &str, err: &SdkError<E>) -> FerryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err.code() {
        Some("FileSystemNotFound") => FerryError::config(format!(
            "{uri}: no EFS file system {} in region {region} (check the ID, --region and the account the credentials belong to)",
            url.fs_id
        )),
        _ => match super::s3::error::classify(op, uri, err) {
            // The shared wording names S3; here it is the EFS API that does not answer.
            e if e.kind == ErrorKind::Unavailable => FerryError::new(
                ErrorKind::Unavailable,
                format!("cannot {op} {uri}: the EFS API does not answer (check --endpoint-url, --region and the network)"),
            ),
            e => e,
        },
    }
}

/// Resolves `uri` to the address of the mount target to use.
pub fn resolve(uri: &str, settings: &S3Settings) -> Result<(EfsUrl, MountTarget), FerryError> {
    let url = EfsUrl::parse(uri).map_err(FerryError::config)?;
    let az = url.az.clone().or_else(|| std::env::var("FERRY_AVAILABILITY_ZONE").ok().filter(|z| !z.is_empty()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FerryError::new(ErrorKind::Other, format!("cannot start the EFS client's runtime: {e}")))?;
    // On a thread of its own: the caller may be inside async code.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                runtime.block_on(async {
                    let sdk = super::s3::load_aws_config(settings).await;
                    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
                    let conf = aws_sdk_efs::config::Builder::from(&sdk)
                        .region(Region::new(region.clone()))
                        .retry_config(RetryConfig::standard().with_max_attempts(3))
                        .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).operation_timeout(Duration::from_secs(30)).build())
                        .build();
                    let client = aws_sdk_efs::Client::from_conf(conf);
                    let described = client
                        .describe_file_systems()
                        .file_system_id(&url.fs_id)
                        .send()
                        .await
                        .map_err(|e| api_error("describe the file system of", &url, uri, &region, &e))?;
                    let Some(fs) = described.file_systems().first() else {
                        return Err(FerryError::config(format!("{uri}: no EFS file system {} in region {region} (check the ID and --region)", url.fs_id)));
                    };
                    let fs_state = fs.life_cycle_state().as_str().to_string();
                    let mut targets = Vec::new();
                    let mut marker = None;
                    loop {
                        let page = client
                            .describe_mount_targets()
                            .file_system_id(&url.fs_id)
                            .set_marker(marker.take())
                            .send()
                            .await
                            .map_err(|e| api_error("list the mount targets of", &url, uri, &region, &e))?;
                        targets.extend(page.mount_targets().iter().map(|t| MountTarget {
                            id: t.mount_target_id().to_string(),
                            ip: t.ip_address().map(str::to_string),
                            az: t.availability_zone_name().map(str::to_string),
                            state: if *t.life_cycle_state() == LifeCycleState::Available {
                                "available".into()
                            } else {
                                t.life_cycle_state().as_str().to_string()
                            },
                        }));
                        match page.next_marker() {
                            Some(m) if !m.is_empty() && targets.len() < 10_000 => marker = Some(m.to_string()),
                            _ => break,
                        }
                    }
                    let chosen = choose(&url, uri, &fs_state, &targets, az.as_deref())?.clone();
                    Ok((url.clone(), chosen))
                })
            })
            .join()
            .unwrap_or_else(|_| Err(FerryError::new(ErrorKind::Other, "resolving the EFS file system failed")))
    })
}

/// Opens an `efs://` location: resolves it, then speaks NFSv4.1 to the chosen mount target.
pub fn open(uri: &str, settings: &S3Settings, fsync: bool) -> Result<super::SharedLocation, FerryError> {
    let (url, target) = resolve(uri, settings)?;
    let ip = target.ip.clone().ok_or_else(|| FerryError::config(format!("{uri}: mount target {} has no IP address", target.id)))?;
    let nfs = NfsUrl {
        host: ip,
        version: Version::V41,
        export_in_path: false,
        nfs_port: Some(NFS_PORT),
        mount_port: None,
        path: if url.path.is_empty() { Vec::new() } else { format!("/{}", url.path).into_bytes() },
        uid: None,
        gid: None,
        connections: super::nfs::url::DEFAULT_CONNECTIONS,
        timeout: super::nfs::url::DEFAULT_TIMEOUT,
    };
    let shown = format!("{uri} (mount target {}, {}:{NFS_PORT})", target.id, nfs.host);
    Ok(std::sync::Arc::new(NfsLocation::open_url(nfs, shown, fsync)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, az: &str, state: &str) -> MountTarget {
        MountTarget { id: id.into(), ip: Some(format!("10.0.0.{}", id.len())), az: Some(az.into()), state: state.into() }
    }

    #[test]
    fn uris_parse_and_bad_ones_say_what_an_id_looks_like() {
        let u = EfsUrl::parse("efs://fs-0123abcd/data/set/?az=eu-west-1b").unwrap();
        assert_eq!((u.fs_id.as_str(), u.path.as_str(), u.az.as_deref()), ("fs-0123abcd", "data/set", Some("eu-west-1b")));
        assert_eq!(EfsUrl::parse("efs://fs-0123abcd").unwrap().path, "");
        for bad in ["efs://", "efs://myfs/x", "efs://fs-xyz", "efs://fs-12/../etc", "efs://fs-12?nconnect=4"] {
            let e = EfsUrl::parse(bad).unwrap_err();
            assert!(e.starts_with(bad), "{e}");
        }
        assert!(EfsUrl::parse("efs://myfs").unwrap_err().contains("fs-0123456789abcdef0"));
    }

    #[test]
    fn the_agents_zone_is_preferred_then_any_available_target() {
        let url = EfsUrl::parse("efs://fs-12").unwrap();
        let targets = [target("fsmt-a", "z1", "creating"), target("fsmt-bb", "z2", "available"), target("fsmt-ccc", "z3", "available")];
        assert_eq!(choose(&url, "efs://fs-12", "available", &targets, Some("z3")).unwrap().id, "fsmt-ccc");
        assert_eq!(choose(&url, "efs://fs-12", "available", &targets, Some("z1")).unwrap().id, "fsmt-bb", "z1's target is not available yet");
        assert_eq!(choose(&url, "efs://fs-12", "available", &targets, None).unwrap().id, "fsmt-bb");
    }

    #[test]
    fn an_unavailable_file_system_or_no_target_gets_one_line() {
        let url = EfsUrl::parse("efs://fs-12").unwrap();
        let e = choose(&url, "efs://fs-12", "creating", &[], None).unwrap_err();
        assert!(e.message.contains("is creating, not available"), "{}", e.message);
        let e = choose(&url, "efs://fs-12", "available", &[], None).unwrap_err();
        assert!(e.message.contains("no available mount target (it has none)"), "{}", e.message);
        let e = choose(&url, "efs://fs-12", "available", &[target("fsmt-a", "z1", "deleting")], None).unwrap_err();
        assert!(e.message.contains("fsmt-a is deleting"), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }
}
