//! The Location conformance suite on every backend: the local tree, and S3 on two real
//! S3-compatible servers (s3s-fs and moto), so the S3 code stays honest across
//! implementations.

use ferry_common::model::S3Settings;
use ferry_common::testing::{S3Flavor, S3Server};
use ferry_worker::storage::conformance::{run_location_suite, Capabilities};
use ferry_worker::storage::local::location::LocalLocation;
use ferry_worker::storage::s3::S3Location;

#[test]
fn local_tree_passes_the_location_suite() {
    let dir = tempfile::tempdir().unwrap();
    let loc = LocalLocation::open(dir.path(), "conformance").unwrap();
    run_location_suite(&loc, Capabilities { dir_markers: true, full_object_crc: true, refused_put_leaves_nothing: true });
}

fn s3_suite(flavor: S3Flavor) {
    let Some(server) = S3Server::start(flavor) else { return };
    server.export_env();
    let settings = S3Settings { endpoint_url: Some(server.endpoint.clone()), path_style: true, ..S3Settings::default() };
    let loc = S3Location::open(&server.uri("conformance/root"), &settings).unwrap();
    loc.probe().unwrap();
    let caps = match flavor {
        S3Flavor::S3sFs => Capabilities { dir_markers: false, full_object_crc: true, refused_put_leaves_nothing: false },
        S3Flavor::Moto => Capabilities { dir_markers: true, full_object_crc: false, refused_put_leaves_nothing: true },
    };
    run_location_suite(&loc, caps);
}

#[test]
fn s3_on_s3s_fs_passes_the_location_suite() {
    s3_suite(S3Flavor::S3sFs);
}

#[test]
fn s3_on_moto_passes_the_location_suite() {
    s3_suite(S3Flavor::Moto);
}
