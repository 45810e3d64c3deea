package harness

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"isthmus.dev/certs"
)

// No token or key may appear in the output of a process the tests start.
// Every helper that makes a secret (NewPKI, KubePKI, TokenFile, the
// control plane's tokens) registers it here, in one set for the test
// process; at its cleanup every Proc's output is scanned for every secret
// registered so far, and a hit fails the test that ran the process (a
// Shared fixture's: the package). The scan covers the whole suite because
// the secrets come from these few helpers.

// minSecret is the shortest string registered: shorter ones would match
// by chance. It is also the length of the index's keys.
const minSecret = 16

// secretSet holds the registered secrets, indexed by their first
// minSecret bytes so that a scan is one map look-up per output byte,
// however many secrets there are.
type secretSet struct {
	mu      sync.Mutex
	byStart map[string][]secret
}

type secret struct {
	value string
	label string // what it is, for the failure message; never the value
}

var secrets = &secretSet{byStart: map[string][]secret{}}

func (s *secretSet) add(label, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := value[:minSecret]
	for _, old := range s.byStart[k] {
		if old.value == value {
			return
		}
	}
	s.byStart[k] = append(s.byStart[k], secret{value: value, label: label})
}

// RegisterSecret adds value, a token or password, to the strings no
// process may print; label names it in a failure (the value never
// appears there). A value shorter than 16 bytes is not a secret worth the
// name, and fails t. A JWT's signature, the part that makes it a
// credential, is registered on its own as well.
func RegisterSecret(t testing.TB, label, value string) {
	t.Helper()
	if len(value) < minSecret {
		t.Fatalf("RegisterSecret %s: %d bytes; a secret to scan logs for needs %d or more", label, len(value), minSecret)
	}
	secrets.add(label, value)
	if parts := strings.Split(value, "."); len(parts) == 3 && len(parts[2]) >= minSecret {
		secrets.add(label+" (its signature)", parts[2])
	}
}

// RegisterKeyPEM registers a private key as it would leak: each base64
// body line of its PEM (the key file printed), and the base64 of the
// whole file in 64-character pieces (a kubeconfig's client-key-data).
// Only lines and pieces that carry secret material are registered: every
// key of a kind starts alike, and its public half is no secret (a
// printed certificate holds it).
func RegisterKeyPEM(t testing.TB, label string, keyPEM []byte) {
	t.Helper()
	mask, err := keySecretMask(keyPEM)
	if err != nil {
		t.Fatalf("RegisterKeyPEM %s: %v", label, err)
	}
	for start := 0; start < len(keyPEM); {
		end := bytes.IndexByte(keyPEM[start:], '\n')
		if end < 0 {
			end = len(keyPEM) - start
		}
		if line := keyPEM[start : start+end]; len(line) >= minSecret && countTrue(mask[start:start+end]) >= minSecretChars {
			secrets.add(label, string(line))
		}
		start += end + 1
	}
	// Piece j is the file's bytes [48j, 48j+48): the same piece appears in
	// any base64 of the file, or of a part of it at that alignment.
	enc := base64.StdEncoding.EncodeToString(keyPEM)
	for j := 0; 48*j < len(keyPEM); j++ {
		piece := enc[64*j : min(64*j+64, len(enc))]
		if len(piece) >= minSecret && countTrue(mask[48*j:min(48*j+48, len(keyPEM))]) >= minSecretChars {
			secrets.add(label+" (base64 of the file)", piece)
		}
	}
}

// minSecretChars: a line or piece is registered if it has this many
// base64 characters of secret material (36 bits).
const minSecretChars = 6

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// keySecretMask marks the bytes of keyPEM (one PEM block) that encode
// the key's private material: the base64 characters of its body whose
// bits come from the private scalar, the primes and exponents, or the
// seed.
func keySecretMask(keyPEM []byte) ([]bool, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	key, err := certs.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	parts, err := privateParts(key)
	if err != nil {
		return nil, err
	}
	secretDER := make([]bool, len(block.Bytes))
	for _, p := range parts {
		i := bytes.Index(block.Bytes, p)
		if i < 0 {
			return nil, fmt.Errorf("the %T's private part is not in its DER", key)
		}
		for j := i; j < i+len(p); j++ {
			secretDER[j] = true
		}
	}
	mask := make([]bool, len(keyPEM))
	bodyStart := bytes.IndexByte(keyPEM, '\n') + 1
	bodyEnd := bytes.Index(keyPEM, []byte("-----END"))
	if bodyStart == 0 || bodyEnd < bodyStart {
		return nil, errors.New("no PEM body")
	}
	k := 0 // base64 characters so far: character k holds bits [6k, 6k+6)
	for i := bodyStart; i < bodyEnd; i++ {
		if c := keyPEM[i]; c == '\n' || c == '\r' || c == '=' {
			continue
		}
		for _, b := range []int{6 * k / 8, (6*k + 5) / 8} {
			mask[i] = mask[i] || (b < len(secretDER) && secretDER[b])
		}
		k++
	}
	return mask, nil
}

// privateParts are the secret values of key as its DER holds them.
func privateParts(key crypto.Signer) ([][]byte, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		d, err := k.Bytes()
		return [][]byte{d}, err
	case *rsa.PrivateKey:
		parts := [][]byte{k.D.Bytes()}
		for _, p := range k.Primes {
			parts = append(parts, p.Bytes())
		}
		return parts, nil
	case ed25519.PrivateKey:
		return [][]byte{k.Seed()}, nil
	}
	return nil, fmt.Errorf("private key of type %T: not known to the secret scan", key)
}

// RegisterKeyFile registers the private key in file path.
func RegisterKeyFile(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("RegisterKeyFile: %v", err)
	}
	RegisterKeyPEM(t, "private key "+path, b)
}

// RegisterBundle registers every private key of b. NewPKI does it; a test
// that makes a bundle with certs.NewBundle itself calls it.
func RegisterBundle(t testing.TB, b *certs.Bundle) {
	t.Helper()
	for _, key := range []string{b.CAKey, b.AgentPortKey, b.FrontendKey, b.ClientKey, b.AgentKey} {
		RegisterKeyFile(t, key)
	}
}

// leak is a registered secret found in a process's output.
type leak struct {
	label string
	line  int    // 1-based line of the output
	text  string // that line with every secret masked
}

// find returns the leaks in out, one per secret's label and line; a
// secret inside another one found (a token's signature) is not counted
// again.
func (s *secretSet) find(out string) []leak {
	s.mu.Lock()
	defer s.mu.Unlock()
	var leaks []leak
	type hit struct {
		line  int
		label string
	}
	seen := map[hit]bool{}
	line, lineStart, covered := 1, 0, 0
	for i := 0; i+minSecret <= len(out); i++ {
		if out[i] == '\n' {
			line, lineStart = line+1, i+1
			continue
		}
		for _, sec := range s.byStart[out[i:i+minSecret]] {
			end := i + len(sec.value)
			if end <= covered || !strings.HasPrefix(out[i:], sec.value) || seen[hit{line, sec.label}] {
				continue
			}
			seen[hit{line, sec.label}] = true
			covered = max(covered, end)
			eol := strings.IndexByte(out[lineStart:], '\n')
			if eol < 0 {
				eol = len(out) - lineStart
			}
			leaks = append(leaks, leak{label: sec.label, line: line, text: s.maskLocked(out[lineStart : lineStart+eol])})
		}
	}
	return leaks
}

// findInHexDumps reports the secrets in out's hex dumps, one per dump.
func (s *secretSet) findInHexDumps(out string) []leak {
	var leaks []leak
	for _, d := range hexDumps(out) {
		for _, l := range s.find(string(d.bytes)) {
			leaks = append(leaks, leak{label: l.label + " (in a hex dump)", line: d.line,
				text: fmt.Sprintf("a hex dump of %d bytes", len(d.bytes))})
			break
		}
	}
	return leaks
}

// hexRow is a row of encoding/hex.Dump, as client-go logs binary request
// and response bodies (a protobuf TokenReview holds the agent's token):
// its offset and up to 16 bytes. In a log line the rows may be joined by
// an escaped "\n".
var hexRow = regexp.MustCompile(`([0-9a-f]{8})  ((?:[0-9a-f]{2} {1,2}){1,16}) *\|`)

// hexDump is the bytes of consecutive hex.Dump rows, and the line of out
// where they start.
type hexDump struct {
	line  int
	bytes []byte
}

// hexDumps decodes the hex dumps in out: secrets in them are printed too.
func hexDumps(out string) []hexDump {
	var dumps []hexDump
	next := -1 // the offset the current dump's next row would have
	for _, m := range hexRow.FindAllStringSubmatchIndex(out, -1) {
		off, err := strconv.ParseUint(out[m[2]:m[3]], 16, 64)
		if err != nil {
			continue
		}
		b, err := hex.DecodeString(strings.Join(strings.Fields(out[m[4]:m[5]]), ""))
		if err != nil {
			continue
		}
		if int(off) != next || len(dumps) == 0 {
			dumps = append(dumps, hexDump{line: 1 + strings.Count(out[:m[0]], "\n")})
		}
		d := &dumps[len(dumps)-1]
		d.bytes = append(d.bytes, b...)
		next = int(off) + len(b)
	}
	return dumps
}

// elideHexDumps replaces every hex dump row of out, its text column
// included: a dump that held a secret must not be shown either.
func elideHexDumps(out string) string {
	var b strings.Builder
	last := 0
	for _, m := range hexRow.FindAllStringSubmatchIndex(out, -1) {
		if m[0] < last {
			continue
		}
		n := len(strings.Fields(out[m[4]:m[5]])) // the row's bytes, and its text column's width
		end := min(m[1]+n+1, len(out))
		b.WriteString(out[last:m[0]])
		b.WriteString("[hex dump row elided]")
		last = end
	}
	b.WriteString(out[last:])
	return b.String()
}

// mask replaces every registered secret in out.
func (s *secretSet) mask(out string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maskLocked(out)
}

func (s *secretSet) maskLocked(out string) string {
	var b strings.Builder
	last := 0
	for i := 0; i+minSecret <= len(out); i++ {
		for _, sec := range s.byStart[out[i:i+minSecret]] {
			if i >= last && strings.HasPrefix(out[i:], sec.value) {
				b.WriteString(out[last:i])
				b.WriteString("[SECRET: " + sec.label + "]")
				last = i + len(sec.value)
				break
			}
		}
	}
	if last == 0 {
		return out
	}
	b.WriteString(out[last:])
	return b.String()
}

// checkSecrets fails t for each registered secret in the output of the
// process name, and returns out with every secret masked, fit to log.
func checkSecrets(t testing.TB, name, out string) string {
	t.Helper()
	hexLeaks := secrets.findInHexDumps(out)
	leaks := append(secrets.find(out), hexLeaks...)
	for _, l := range leaks {
		text := l.text
		if len(text) > 400 {
			text = text[:400] + "..."
		}
		t.Errorf("%s printed a secret, %s, in line %d of its output (masked here): %s", name, l.label, l.line, text)
	}
	if len(leaks) == 0 {
		return out
	}
	if len(hexLeaks) > 0 {
		out = elideHexDumps(out)
	}
	return secrets.mask(out)
}

// SecretsRegistered is how many strings the scan looks for (a test of the
// scan checks its helpers registered theirs).
func SecretsRegistered() int {
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	n := 0
	for _, l := range secrets.byStart {
		n += len(l)
	}
	return n
}

// FindSecrets reports the registered secrets in out, one line each,
// masked: what the cleanup of a Proc reports.
func FindSecrets(out string) []string {
	var r []string
	for _, l := range append(secrets.find(out), secrets.findInHexDumps(out)...) {
		r = append(r, fmt.Sprintf("%s in line %d: %s", l.label, l.line, l.text))
	}
	return r
}
