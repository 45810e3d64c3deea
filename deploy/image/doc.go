// Package image builds isthmus's container image without a registry or a
// daemon: it cross-compiles proxy-server, proxy-agent and isthmus as static
// binaries for every platform, puts them in one layer per platform, and
// writes one image index for all platforms as an OCI image layout tarball
// (the file `make image` writes and `ctr images import` reads).
//
// Each platform's image holds exactly:
//
//	/proxy-server, /proxy-agent, /isthmus   static (CGO_ENABLED=0), root-owned, 0755
//	/etc/passwd, /etc/group                 root and nonroot (65532), so tools show a name
//
// and runs as 65532:65532 with no entrypoint: the manifests set the command.
// There is no shell, no libc and no CA bundle. None is needed: every TLS
// peer of the daemons is verified against a CA the operator configures
// (--ca-cert, --cluster-ca-cert, --server-ca-cert, the kubeconfig's CA, the
// service account's ca.crt), never against the system roots.
//
// The output is reproducible: file times are fixed (Config.Created), entries
// are sorted, owners and modes are fixed, and gzip writes no name or time,
// so building the same sources twice gives the same digests.
package image
