    ("EW_KIND_@UPPER@", KIND_@UPPER@ as u64),
    ("EW_PROBE_@UPPER@", PROBE_@UPPER@ as u64),
