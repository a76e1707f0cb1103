//! The Location conformance suite (`ferry_worker::location::conformance`) on every backend:
//! the local tree, and S3 on two real S3-compatible servers (s3s-fs and moto), so the S3 code
//! stays honest across implementations. Each check runs in a fresh directory or prefix and
//! reports under its own name.

use ferry_common::model::S3Settings;
use ferry_common::testing::{S3Flavor, S3Server};
use ferry_worker::location::conformance::{run_all, Quirks};
use ferry_worker::location::local::LocalLocation;
use ferry_worker::location::s3::S3Location;
use ferry_worker::location::Location;

#[test]
fn local_tree_passes_the_location_suite() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| -> Box<dyn Location> {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        Box::new(LocalLocation::open(&root, "conformance").unwrap())
    };
    run_all(&fresh, Quirks::default());
}

fn s3_suite(flavor: S3Flavor, quirks: Quirks) {
    let Some(server) = S3Server::start(flavor) else {
        return;
    };
    server.export_env();
    let settings = S3Settings { endpoint_url: Some(server.endpoint.clone()), path_style: true, ..S3Settings::default() };
    let fresh = |name: &str| -> Box<dyn Location> {
        let loc = S3Location::open(&server.uri(&format!("conformance/{name}")), &settings).unwrap();
        loc.probe().unwrap();
        Box::new(loc)
    };
    run_all(&fresh, quirks);
}

#[test]
fn s3_on_s3s_fs_passes_the_location_suite() {
    s3_suite(S3Flavor::S3sFs, Quirks { no_empty_dirs: true, refused_put_stays: true, ..Quirks::default() });
}

#[test]
fn s3_on_moto_passes_the_location_suite() {
    s3_suite(S3Flavor::Moto, Quirks { no_full_object_crc: true, ..Quirks::default() });
}

#[test]
fn nfs3_on_ganesha_passes_the_location_suite() {
    use ferry_common::testing::NfsServer;
    use ferry_worker::location::nfs::NfsLocation;
    let Some(server) = NfsServer::shared() else {
        return;
    };
    let fresh = |name: &str| -> Box<dyn Location> {
        let (_, uri) = server.fresh(&format!("conformance-{name}"));
        Box::new(NfsLocation::open(&uri, true).unwrap_or_else(|e| panic!("open {uri}: {e}")))
    };
    run_all(&fresh, Quirks::default());
}

#[test]
fn nfs41_on_ganesha_passes_the_location_suite() {
    use ferry_common::testing::NfsServer;
    use ferry_worker::location::nfs::NfsLocation;
    let Some(server) = NfsServer::shared() else {
        return;
    };
    let fresh = |name: &str| -> Box<dyn Location> {
        let (_, uri) = server.fresh41(&format!("conformance41-{name}"));
        let loc = NfsLocation::open(&uri, true).unwrap_or_else(|e| panic!("open {uri}: {e}"));
        assert_eq!(loc.version(), "NFSv4.1");
        Box::new(loc)
    };
    run_all(&fresh, Quirks::default());
}

#[path = "../../coordinator/tests/support/samba.rs"]
mod samba;

#[test]
fn smb_on_samba_passes_the_location_suite() {
    use ferry_common::model::SmbOptions;
    use ferry_worker::location::smb::SmbLocation;
    let Some(server) = samba::SambaServer::shared() else {
        return;
    };
    let opts = SmbOptions { password_file: Some(server.password_file().to_string_lossy().into_owned()), ..SmbOptions::default() };
    let fresh = |name: &str| -> Box<dyn Location> {
        let (_, uri) = server.fresh("share", &format!("conformance-{name}"));
        Box::new(SmbLocation::open(&uri, &opts, false).unwrap_or_else(|e| panic!("open {uri}: {e}")))
    };
    run_all(&fresh, Quirks::default());
}
