//! A minimal NFSv4.1 client: ONC RPC over TCP with AUTH_SYS, one session with a slot table,
//! and the COMPOUNDs a data-transfer tool needs (lookup, readdir with attributes, open/create,
//! read, write, commit, setattr, mkdir, symlink, mknod, link, readlink, rename, remove).
//!
//! The protocol layer the NFS backend will speak to EFS and to NFSv4.1 servers; it is not a
//! `Location` yet (the backend speaks NFSv3 through [`super::rpc`]). Its tests run against
//! nfs-ganesha (worker/tests/nfs4). Start at [`client::Client::connect`].

pub mod attr;
pub mod client;
pub mod error;
pub mod proto;
pub mod rpc;
pub mod xdr;
