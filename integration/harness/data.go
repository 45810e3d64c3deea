package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
)

// patternPeriod is the length of a Pattern's table. It is odd and not near a
// power of two, so that no chunk size a test or a proxy uses lines up with
// it: a dropped, repeated or reordered chunk shows as a mismatch.
const patternPeriod = 4<<20 + 9

// Pattern is a deterministic pseudo-random byte stream: the byte at offset i
// is a function of the seed and i alone, so a receiver can check what it got
// without a copy of what was sent.
type Pattern struct {
	Seed uint64
	tab  []byte
}

var (
	patternMu    sync.Mutex
	patternCache = map[uint64]*Pattern{}
)

// NewPattern returns the stream of seed. Its table (4 MiB) is cached for
// the life of the process: a test of many connections shares a handful of
// seeds out among them.
func NewPattern(seed uint64) *Pattern {
	patternMu.Lock()
	defer patternMu.Unlock()
	if p, ok := patternCache[seed]; ok {
		return p
	}
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	tab := make([]byte, patternPeriod)
	_, _ = rand.NewChaCha8(key).Read(tab)
	p := &Pattern{Seed: seed, tab: tab}
	patternCache[seed] = p
	return p
}

// Fill writes the stream's bytes [off, off+len(b)) into b.
func (p *Pattern) Fill(b []byte, off int64) {
	i := int(off % patternPeriod)
	for len(b) > 0 {
		n := copy(b, p.tab[i:])
		b = b[n:]
		i = 0
	}
}

// Mismatch returns the index of the first byte of b that differs from the
// stream at off, or -1 if b matches.
func (p *Pattern) Mismatch(b []byte, off int64) int {
	i := int(off % patternPeriod)
	done := 0
	for done < len(b) {
		want := p.tab[i:]
		if len(want) > len(b)-done {
			want = want[:len(b)-done]
		}
		got := b[done : done+len(want)]
		if !bytes.Equal(got, want) {
			for k := range got {
				if got[k] != want[k] {
					return done + k
				}
			}
		}
		done += len(want)
		i = 0
	}
	return -1
}

// WriteChunks writes the first n bytes of the stream to w, chunk bytes per
// Write (konnectivity-client sends one DATA packet per Write, so a test never
// hands it one giant buffer).
func (p *Pattern) WriteChunks(w io.Writer, n int64, chunk int) error {
	buf := make([]byte, chunk)
	for off := int64(0); off < n; {
		b := buf
		if rem := n - off; rem < int64(len(b)) {
			b = b[:rem]
		}
		p.Fill(b, off)
		k, err := w.Write(b)
		off += int64(k)
		if err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
		if k != len(b) {
			return fmt.Errorf("short write at offset %d: %d of %d bytes", off, k, len(b))
		}
	}
	return nil
}

// Received is what a reader of a Pattern stream got.
type Received struct {
	N        int64 // bytes read (all matching the stream up to Mismatch)
	Mismatch int64 // offset of the first wrong byte, or -1
	Err      error // the error that ended the read (nil at EOF)
}

func (r Received) String() string {
	return fmt.Sprintf("%d bytes, first mismatch at %d, err %v", r.N, r.Mismatch, r.Err)
}

// ReadVerify reads from r until EOF, an error, or limit bytes (limit < 0: no
// limit), checking every byte against the stream. It stops at the first
// mismatch.
func (p *Pattern) ReadVerify(r io.Reader, limit int64) Received {
	return p.ReadVerifyAt(r, 0, limit)
}

// ReadVerifyAt is ReadVerify for a reader positioned at offset off of the
// stream. N counts the bytes read by this call; Mismatch is an offset in the
// stream.
func (p *Pattern) ReadVerifyAt(r io.Reader, off, limit int64) Received {
	res := Received{Mismatch: -1}
	buf := make([]byte, 256<<10)
	for limit < 0 || res.N < limit {
		b := buf
		if limit >= 0 && limit-res.N < int64(len(b)) {
			b = b[:limit-res.N]
		}
		n, err := r.Read(b)
		if n > 0 {
			if bad := p.Mismatch(b[:n], off+res.N); bad >= 0 {
				res.Mismatch = off + res.N + int64(bad)
				res.N += int64(bad)
				res.Err = fmt.Errorf("data differs from the stream at offset %d", res.Mismatch)
				return res
			}
			res.N += int64(n)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				res.Err = err
			}
			return res
		}
	}
	return res
}

// Sink is a backend handler that reads each connection to its end, checks it
// against p and reports what it got on out (buffered by the caller; a report
// that does not fit is dropped rather than block the backend).
func Sink(p *Pattern, out chan<- Received) func(net.Conn) {
	return func(c net.Conn) {
		r := p.ReadVerify(c, -1)
		select {
		case out <- r:
		default:
		}
	}
}

// Source is a backend handler that writes the first n bytes of p to each
// connection, chunk bytes per Write, then returns (the backend closes the
// connection). A write error ends it early.
func Source(p *Pattern, n int64, chunk int) func(net.Conn) {
	return func(c net.Conn) { _ = p.WriteChunks(c, n, chunk) }
}

// CloseWhenDone closes c when ctx ends: a bound for connections that have no
// deadlines (konnectivity-client's conn does not implement them). It also
// sets c's deadline where the connection supports one. The returned func
// stops watching.
func CloseWhenDone(ctx context.Context, c net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { _ = c.Close() })
}
