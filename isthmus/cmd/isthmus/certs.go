package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/certs"
)

const certsUsage = `isthmus certs: the PKI of the tunnel, as files in one directory (--dir DIR,
required: nothing is written into the current directory unasked). Every
command prints the files it wrote and the daemon flags that take them.

Commands:
  ca                a CA                          DIR/ca.crt, DIR/ca.key
  agent-port        proxy-server's agent-port     DIR/agent-port.crt, .key
                    server certificate (SANs: every controller and the LB)
  frontend          proxy-server's frontend       DIR/frontend.crt, .key
                    server certificate (TCP mode)
  apiserver-client  kube-apiserver's client       DIR/apiserver-client.crt, .key
                    certificate for the frontend (TCP mode)
  agent             an agent client certificate   DIR/agent.crt, .key
  kubeconfig        proxy-server's kubeconfig     DIR/proxy-server.kubeconfig
                    for kube-apiserver (signed by the Kubernetes CA)
  check             report when each certificate expires; exit status 1
                    when one expires within --warn-within

Keys are ECDSA P-256 unless --key-type rsa. Files are written atomically,
keys with mode 0600. When any file a command would write exists, it writes
nothing at all, unless --force.

Run 'isthmus certs COMMAND --help' for a command's flags.
`

var certsCommands = []command{
	{"ca", runCertsCA},
	{"agent-port", runCertsAgentPort},
	{"frontend", runCertsFrontend},
	{"apiserver-client", runCertsAPIServerClient},
	{"agent", runCertsAgent},
	{"kubeconfig", runCertsKubeconfig},
	{"check", runCertsCheck},
}

func runCerts(e env, args []string) error {
	return subDispatch(e, "isthmus certs", certsUsage, certsCommands, args)
}

// outFlags are the flags of every command that writes files.
type outFlags struct {
	dir   string
	name  string
	force bool
}

func (o *outFlags) register(fs *pflag.FlagSet, name string) {
	fs.StringVar(&o.dir, "dir", "", "directory to write into, e.g. pki (required; created with mode 0700 if missing)")
	fs.StringVar(&o.name, "name", name, "base name of the files written in --dir")
	fs.BoolVar(&o.force, "force", false, "replace files that exist (without it, nothing is written if any of them exists)")
}

// check checks the flags after parsing.
func (o *outFlags) check() error {
	if o.dir == "" {
		return required("--dir DIR", "the directory to write the files into (e.g. --dir pki; it is created if missing)")
	}
	if o.name == "" || strings.ContainsRune(o.name, filepath.Separator) {
		return usageErrorf("--name %q: want a base name, without folders (the folder is --dir)", o.name)
	}
	return nil
}

func (o *outFlags) path(ext string) string { return filepath.Join(o.dir, o.name+ext) }

// write writes files into --dir, or nothing if one exists and --force is
// not given, and says what it wrote.
func (o *outFlags) write(e env, files []certs.File) error {
	return writeFiles(e, files, o.force, 0o700)
}

// keyFlags choose the key of a new certificate.
type keyFlags struct {
	keyType string
	rsaBits int
}

func (k *keyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.keyType, "key-type", string(certs.KeyECDSA), "key algorithm: ecdsa (P-256) or rsa")
	fs.IntVar(&k.rsaBits, "rsa-bits", 0, fmt.Sprintf("RSA key size with --key-type rsa: 2048, 3072 or 4096 (default %d)", certs.DefaultRSABits))
}

func (k *keyFlags) spec() (certs.KeySpec, error) {
	s := certs.KeySpec{Type: certs.KeyType(k.keyType), RSABits: k.rsaBits}
	if s.Type != certs.KeyRSA && k.rsaBits != 0 {
		return s, usageErrorf("--rsa-bits is for --key-type rsa")
	}
	if err := s.Validate(); err != nil {
		return s, usageErrorf("--key-type/--rsa-bits: %w", err)
	}
	return s, nil
}

// issueFlags are the flags of the commands that issue a certificate from
// the CA in --dir.
type issueFlags struct {
	outFlags
	keyFlags
	caCert, caKey string
	cn            string
	validity      time.Duration
}

func (f *issueFlags) register(fs *pflag.FlagSet, name, cn string) {
	f.outFlags.register(fs, name)
	f.keyFlags.register(fs)
	fs.StringVar(&f.caCert, "ca-cert", "", "CA certificate that signs (default DIR/ca.crt)")
	fs.StringVar(&f.caKey, "ca-key", "", "CA key that signs (default DIR/ca.key)")
	fs.StringVar(&f.cn, "cn", cn, "subject common name")
	fs.DurationVar(&f.validity, "validity", certs.DefaultValidity, "validity from now (capped at the CA's expiry)")
}

// check checks the flags after parsing: usage errors.
func (f *issueFlags) check() (certs.KeySpec, error) {
	if err := f.outFlags.check(); err != nil {
		return certs.KeySpec{}, err
	}
	if f.validity <= 0 {
		return certs.KeySpec{}, usageErrorf("--validity %v: must be positive (e.g. 8760h)", f.validity)
	}
	return f.spec()
}

func (f *issueFlags) loadCA() (*certs.CA, error) {
	if f.caCert == "" {
		f.caCert = filepath.Join(f.dir, "ca.crt")
	}
	if f.caKey == "" {
		f.caKey = filepath.Join(f.dir, "ca.key")
	}
	ca, err := certs.LoadCA(f.caCert, f.caKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (create the CA first with 'isthmus certs ca --dir %s', or pass --ca-cert and --ca-key)", err, f.dir)
		}
		return nil, err
	}
	return ca, nil
}

// issue signs r with the CA and writes DIR/NAME.crt and .key. key is
// check's.
func (f *issueFlags) issue(e env, key certs.KeySpec, r certs.Request) (*certs.Pair, error) {
	ca, err := f.loadCA()
	if err != nil {
		return nil, err
	}
	r.CommonName, r.Validity, r.Key = f.cn, f.validity, key
	p, err := ca.Issue(r)
	if err != nil {
		return nil, err
	}
	if err := f.write(e, p.Files(f.path(".crt"), f.path(".key"))); err != nil {
		return nil, err
	}
	describe(e, p, key, ca)
	return p, nil
}

func describe(e env, p *certs.Pair, key certs.KeySpec, ca *certs.CA) {
	c := p.Cert
	var sans []string
	sans = append(sans, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		sans = append(sans, ip.String())
	}
	fmt.Fprintf(e.Stdout, "  subject %q, %s key, signed by %q, valid until %s\n",
		c.Subject.CommonName, key, ca.Cert.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339))
	if len(sans) > 0 {
		fmt.Fprintf(e.Stdout, "  names (SANs): %s\n", strings.Join(sans, ", "))
	}
}

const caUsage = `isthmus certs ca --dir DIR [--key-type ecdsa|rsa] [--force]

Creates a self-signed CA: DIR/ca.crt (0644) and DIR/ca.key (0600), or
DIR/NAME.crt and .key with --name. It signs every other certificate of the
tunnel: proxy-server verifies agents with it (--cluster-ca-cert) and
kube-apiserver's client certificate (--server-ca-cert); agents verify the
server with it (--ca-cert); kube-apiserver verifies the frontend with it
(the egress configuration's caBundle).
`

func runCertsCA(e env, args []string) error {
	var o outFlags
	var k keyFlags
	fs := newFlagSet(e, "isthmus certs ca", caUsage)
	o.register(fs, "ca")
	k.register(fs)
	cn := fs.String("cn", "isthmus-ca", "subject common name of the CA")
	validity := fs.Duration("validity", certs.DefaultCAValidity, "validity from now")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	key, err := k.spec()
	if err != nil {
		return err
	}
	if *validity <= 0 {
		return usageErrorf("--validity %v: must be positive (e.g. 87600h)", *validity)
	}
	ca, err := certs.NewCAFor(certs.CARequest{CommonName: *cn, Validity: *validity, Key: key})
	if err != nil {
		return err
	}
	crt, keyFile := o.path(".crt"), o.path(".key")
	if err := o.write(e, ca.Files(crt, keyFile)); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "  CA %q, %s key, valid until %s\n", *cn, key, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(e.Stdout, "proxy-server: --cluster-ca-cert=%s (agents) --server-ca-cert=%s (kube-apiserver, TCP mode)\n", abs(crt), abs(crt))
	fmt.Fprintf(e.Stdout, "proxy-agent:  --ca-cert=%s\n", abs(crt))
	return nil
}

const agentPortUsage = `isthmus certs agent-port --dir DIR --host ADDR[,ADDR...] [--lb ADDR] [--force]

Issues proxy-server's server certificate for the agent port (8132), signed
by DIR/ca.crt: DIR/agent-port.crt (0644) and DIR/agent-port.key (0600). Its
names (SANs) are every controller address (--host) and the load balancer's
(--lb), IP addresses and DNS names alike: agents verify the name they dial
(--proxy-server-host). Extended key usage: serverAuth.
`

func runCertsAgentPort(e env, args []string) error {
	var f issueFlags
	fs := newFlagSet(e, "isthmus certs agent-port", agentPortUsage)
	f.register(fs, "agent-port", certs.AgentPortCN)
	hosts := fs.StringSlice("host", nil, "controller address (IP or DNS name); repeat or separate with commas")
	lb := fs.StringSlice("lb", nil, "load balancer address(es) in front of the controllers")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := f.check()
	if err != nil {
		return err
	}
	all := append(append([]string{}, *hosts...), *lb...)
	if len(all) == 0 {
		return required("--host", "every controller address (and the load balancer's with --lb): agents check the name they dial against the certificate")
	}
	r, err := certs.ServerRequest(f.cn, all)
	if err != nil {
		return usageErrorf("--host/--lb: %w", err)
	}
	if _, err := f.issue(e, key, r); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "proxy-server: --cluster-cert=%s --cluster-key=%s\n", abs(f.path(".crt")), abs(f.path(".key")))
	return nil
}

const frontendUsage = `isthmus certs frontend --dir DIR [--host ADDR[,ADDR...]] [--force]

Issues proxy-server's server certificate for its frontend in TCP mode
(kube-apiserver connecting over HTTPS with a client certificate), signed by
DIR/ca.crt: DIR/frontend.crt (0644) and DIR/frontend.key (0600). Names
(SANs): --host, default localhost, 127.0.0.1 and ::1 (kube-apiserver on the
same machine). Extended key usage: serverAuth.
`

func runCertsFrontend(e env, args []string) error {
	var f issueFlags
	fs := newFlagSet(e, "isthmus certs frontend", frontendUsage)
	f.register(fs, "frontend", certs.FrontendCN)
	hosts := fs.StringSlice("host", certs.LoopbackHosts, "address kube-apiserver dials (IP or DNS name); repeat or separate with commas")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := f.check()
	if err != nil {
		return err
	}
	r, err := certs.ServerRequest(f.cn, *hosts)
	if err != nil {
		return usageErrorf("--host: %w", err)
	}
	if _, err := f.issue(e, key, r); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "proxy-server: --server-cert=%s --server-key=%s --server-ca-cert=%s\n",
		abs(f.path(".crt")), abs(f.path(".key")), abs(f.caCert))
	return nil
}

const apiserverClientUsage = `isthmus certs apiserver-client --dir DIR [--force]

Issues kube-apiserver's client certificate for proxy-server's frontend in
TCP mode (HTTPConnect over TCP with mutual TLS), signed by DIR/ca.crt:
DIR/apiserver-client.crt (0644) and DIR/apiserver-client.key (0600).
Extended key usage: clientAuth. 'isthmus egress render --transport tcp
--pki-dir DIR' puts them in the egress configuration (clientCert, clientKey).
`

func runCertsAPIServerClient(e env, args []string) error {
	var f issueFlags
	fs := newFlagSet(e, "isthmus certs apiserver-client", apiserverClientUsage)
	f.register(fs, "apiserver-client", certs.APIServerClientCN)
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := f.check()
	if err != nil {
		return err
	}
	if _, err := f.issue(e, key, certs.ClientRequest(f.cn)); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "isthmus egress render: --client-cert=%s --client-key=%s --ca-bundle=%s\n",
		abs(f.path(".crt")), abs(f.path(".key")), abs(f.caCert))
	return nil
}

const agentUsage = `isthmus certs agent --dir DIR [--name NAME] [--cn CN] [--group G] [--force]

Issues an agent's client certificate for the agent port, signed by
DIR/ca.crt: DIR/agent.crt (0644) and DIR/agent.key (0600), or DIR/NAME.crt
and .key with --name (one per node, if you like). proxy-server verifies it
with --cluster-ca-cert. Extended key usage: clientAuth.
`

func runCertsAgent(e env, args []string) error {
	var f issueFlags
	fs := newFlagSet(e, "isthmus certs agent", agentUsage)
	f.register(fs, "agent", certs.AgentCN)
	groups := fs.StringSlice("group", nil, "subject organization(s)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := f.check()
	if err != nil {
		return err
	}
	if _, err := f.issue(e, key, certs.ClientRequest(f.cn, *groups...)); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "proxy-agent: --agent-cert=%s --agent-key=%s --ca-cert=%s\n", abs(f.path(".crt")), abs(f.path(".key")), abs(f.caCert))
	return nil
}
