/* One @CATEGORY@:@EVENT@ event (@NAME@ probe). */
#define EW_KIND_@UPPER@ @KIND@
#define EW_PROBE_@UPPER@ @ID@

struct ew_@NAME@ {
	struct ew_hdr hdr;
	__u32 tgid;
	__u32 _pad;
	char comm[EW_COMM_LEN];
};

