//! Wall-clock time as the daemon publishes it: CLOCK_REALTIME in microseconds since the Unix
//! epoch, and its civil UTC form for log lines, file names and RFC 3339 stamps (no time-zone
//! database, no dependency). Depends on std only.

/// Now, CLOCK_REALTIME, microseconds since the Unix epoch (0 if the clock is before it).
pub fn realtime_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Civil UTC date and time of a Unix time in seconds: (year, month, day, hour, minute, second).
pub fn utc_parts(unix_s: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    )
}

/// RFC 3339 UTC with milliseconds, from microseconds since the epoch.
pub fn rfc3339_us(unix_us: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(unix_us.div_euclid(1_000_000));
    let ms = unix_us.rem_euclid(1_000_000) / 1000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}
