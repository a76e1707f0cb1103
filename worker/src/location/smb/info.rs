//! What a file or directory looks like from SMB: times, attributes, ids, and the flags that
//! select parts of a security descriptor.

/// A Windows FILETIME: 100 ns intervals since 1601-01-01 UTC. 0 means "not set" (in a set
/// request: leave unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WinTime(pub u64);

/// FILETIME of 1970-01-01T00:00:00Z.
pub const UNIX_EPOCH_FILETIME: u64 = 116_444_736_000_000_000;
const TICKS_PER_SEC: i128 = 10_000_000;

impl WinTime {
    /// Seconds and nanoseconds since the Unix epoch (nanoseconds always in 0..1e9, so times
    /// before 1970 have negative seconds and positive nanoseconds).
    pub fn unix(self) -> (i64, u32) {
        let rel = self.0 as i128 - UNIX_EPOCH_FILETIME as i128;
        let secs = rel.div_euclid(TICKS_PER_SEC);
        let ticks = rel.rem_euclid(TICKS_PER_SEC);
        (secs as i64, (ticks * 100) as u32)
    }

    /// From seconds and nanoseconds since the Unix epoch; nanoseconds are truncated to 100 ns.
    /// `None` when out of FILETIME's range (before 1601, or nanos >= 1e9).
    pub fn from_unix(secs: i64, nanos: u32) -> Option<WinTime> {
        if nanos >= 1_000_000_000 {
            return None;
        }
        let v = secs as i128 * TICKS_PER_SEC + (nanos / 100) as i128 + UNIX_EPOCH_FILETIME as i128;
        u64::try_from(v).ok().map(WinTime)
    }
}

/// FILE_ATTRIBUTE_* (MS-FSCC 2.6).
pub mod attr {
    pub const READONLY: u32 = 0x1;
    pub const HIDDEN: u32 = 0x2;
    pub const SYSTEM: u32 = 0x4;
    pub const DIRECTORY: u32 = 0x10;
    pub const ARCHIVE: u32 = 0x20;
    pub const NORMAL: u32 = 0x80;
    pub const TEMPORARY: u32 = 0x100;
    pub const SPARSE_FILE: u32 = 0x200;
    pub const REPARSE_POINT: u32 = 0x400;
    pub const COMPRESSED: u32 = 0x800;
    pub const OFFLINE: u32 = 0x1000;
    pub const NOT_CONTENT_INDEXED: u32 = 0x2000;
    pub const ENCRYPTED: u32 = 0x4000;
    /// What a copy can carry over with a SET_INFO of FileBasicInformation.
    pub const SETTABLE: u32 = READONLY | HIDDEN | SYSTEM | ARCHIVE | TEMPORARY | OFFLINE | NOT_CONTENT_INDEXED;
}

/// Metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub is_dir: bool,
    /// End of file in bytes (0 for directories).
    pub size: u64,
    pub allocation_size: u64,
    pub creation: WinTime,
    pub last_access: WinTime,
    pub last_write: WinTime,
    /// Samba reports the Linux ctime here and cannot set it.
    pub change: WinTime,
    /// FILE_ATTRIBUTE_* bits, see [`attr`].
    pub attributes: u32,
    /// The server's file id (samba: derived from the inode), 0 when the server gives none.
    pub file_id: u64,
    /// Hard links: `Some` from [`super::share::Share::stat`]; `None` from a listing, whose
    /// information class does not carry it.
    pub nlink: Option<u32>,
    /// Bytes of extended attributes (SMB EAs) the entry has.
    pub ea_size: u32,
}

impl Info {
    pub fn readonly(&self) -> bool {
        self.attributes & attr::READONLY != 0
    }
    pub fn hidden(&self) -> bool {
        self.attributes & attr::HIDDEN != 0
    }
}

/// Times and attributes to set with FileBasicInformation. `None` leaves a field unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Basic {
    pub creation: Option<WinTime>,
    pub last_access: Option<WinTime>,
    pub last_write: Option<WinTime>,
    /// Samba ignores it (it cannot set a Linux ctime).
    pub change: Option<WinTime>,
    /// FILE_ATTRIBUTE_* to set; `Some(0)` clears all of them (sent as NORMAL). The directory bit
    /// is taken from the object, whatever is given.
    pub attributes: Option<u32>,
}

impl Basic {
    /// All three settable times and the settable attributes of `info`.
    pub fn from_info(info: &Info) -> Basic {
        Basic {
            creation: Some(info.creation),
            last_access: Some(info.last_access),
            last_write: Some(info.last_write),
            change: None,
            attributes: Some(info.attributes & attr::SETTABLE),
        }
    }
}

/// Parts of a security descriptor to read or write (SECURITY_INFORMATION bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SdFlags {
    pub owner: bool,
    pub group: bool,
    pub dacl: bool,
    pub sacl: bool,
}

impl SdFlags {
    /// DataSync's `NONE`: no security descriptor is copied.
    pub const NONE: SdFlags = SdFlags { owner: false, group: false, dacl: false, sacl: false };
    /// DataSync's `OWNER_DACL`: the owner and the DACL.
    pub const OWNER_DACL: SdFlags = SdFlags { owner: true, group: false, dacl: true, sacl: false };
    /// DataSync's `OWNER_DACL_SACL`: also the SACL (needs SeSecurityPrivilege on the server).
    pub const OWNER_DACL_SACL: SdFlags = SdFlags { owner: true, group: false, dacl: true, sacl: true };
    pub const fn with_group(mut self) -> SdFlags {
        self.group = true;
        self
    }
    pub fn is_empty(&self) -> bool {
        !(self.owner || self.group || self.dacl || self.sacl)
    }
    pub(crate) fn to_smb(self) -> smb::AdditionalInfo {
        smb::AdditionalInfo::new()
            .with_owner_security_information(self.owner)
            .with_group_security_information(self.group)
            .with_dacl_security_information(self.dacl)
            .with_sacl_security_information(self.sacl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trip() {
        assert_eq!(WinTime(UNIX_EPOCH_FILETIME).unix(), (0, 0));
        let t = WinTime::from_unix(1_700_000_000, 123_456_700).unwrap();
        assert_eq!(t.unix(), (1_700_000_000, 123_456_700));
        assert_eq!(WinTime(UNIX_EPOCH_FILETIME - 1).unix(), (-1, 999_999_900));
        assert_eq!(WinTime::from_unix(-1, 999_999_900), Some(WinTime(UNIX_EPOCH_FILETIME - 1)));
        assert_eq!(WinTime::from_unix(-20_000_000_000, 0), None);
        assert_eq!(WinTime(0).unix().0, -11_644_473_600);
    }
}
