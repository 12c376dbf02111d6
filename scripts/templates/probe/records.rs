    record_entry::<@CAMEL@>(),
