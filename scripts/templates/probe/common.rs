
pub const KIND_@UPPER@: u16 = @KIND@;
pub const PROBE_@UPPER@: u32 = @ID@;

wire_record! {
    /// One @CATEGORY@:@EVENT@ event (@NAME@ probe).
    "ew_@NAME@" => pub struct @CAMEL@ {
        pub hdr: Header,
        pub tgid: u32,
        pub _pad: u32,
        pub comm: [u8; COMM_LEN],
    }
}

impl RingRecord for @CAMEL@ {
    const KIND: u16 = KIND_@UPPER@;
}
