//! Who runs a CLI command, as the operating system (not the environment) tells it.
//!
//! Recorded in the trail as `cli:uid=<uid>(<name>)@<host>`. The uid is the process's own,
//! the name comes from the user database and the host from the kernel, so `USER=alice`
//! changes nothing. How far to trust it: anyone who can run the CLI with the configuration
//! (and so read the signing key) is trusted as that local account on that host; root can
//! be anyone. It attributes an action to an account, it does not authenticate a person.

use std::path::Path;

/// `cli:uid=1000(alice)@vm`; parts the system does not tell are `?`.
pub fn operator() -> String {
    let uid = process_uid();
    let name = uid.and_then(|uid| user_name(uid, Path::new("/etc/passwd")));
    let host = host_name().unwrap_or_else(|| "?".into());
    match (uid, name) {
        (Some(uid), Some(name)) => format!("cli:uid={uid}({name})@{host}"),
        (Some(uid), None) => format!("cli:uid={uid}@{host}"),
        (None, _) => format!("cli:uid=?@{host}"),
    }
}

/// The process's real uid: the owner of its `/proc` entry.
#[cfg(unix)]
fn process_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn process_uid() -> Option<u32> {
    None
}

/// The account name of `uid` in a passwd-format file.
fn user_name(uid: u32, passwd: &Path) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid_field = fields.nth(1)?;
        (uid_field.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// The kernel's host name.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_user_database() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("stepgate-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let passwd = dir.join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )?;
        assert_eq!(user_name(1000, &passwd).as_deref(), Some("alice"));
        assert_eq!(user_name(0, &passwd).as_deref(), Some("root"));
        assert_eq!(user_name(42, &passwd), None);
        std::fs::remove_dir_all(&dir)
    }
}
