package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NewImpairedNet is a FaultNet whose pair delays every packet by delay and
// drops a share loss (0.01 is 1%) of them, each way. It uses tc netem on
// the veth pair where the kernel has it (sch_netem); where it has not (a
// kernel built without it, and without modules, as some CI virtual
// machines are), the namespace is joined to the host by two TUN devices
// and a delay line in this process moves the packets between them: the
// kernels' TCP stacks see the same delay and loss. Impairment says which.
func NewImpairedNet(t testing.TB, delay time.Duration, loss float64) *FaultNet {
	t.Helper()
	netem := []string{"root", "netem", "delay", fmt.Sprintf("%dms", delay.Milliseconds()),
		"loss", strconv.FormatFloat(loss*100, 'f', -1, 64) + "%"}
	netemMu.Lock()
	defer netemMu.Unlock()
	if netemMissing == "" {
		n := NewFaultNet(t)
		out, err := exec.Command("tc", append([]string{"qdisc", "add", "dev", n.HostIf}, netem...)...).CombinedOutput()
		if err == nil {
			bhRun(t, "ip", append([]string{"netns", "exec", n.Name, "tc", "qdisc", "add", "dev", n.NSIf}, netem...)...)
			n.Impairment = fmt.Sprintf("tc netem delay %v loss %v%% on both ends of a veth pair", delay, loss*100)
			return n
		}
		// No netem here: the veth pair gives way to a TUN pair, now and
		// for the rest of this process.
		netemMissing = fmt.Sprintf("tc qdisc add ... netem: %v: %s", err, strings.TrimSpace(string(out)))
		(&Blackhole{Name: n.Name, HostIf: n.HostIf}).remove(t)
	}
	tn := newTunNet(t, delay, loss)
	tn.Impairment = fmt.Sprintf("delay line %v and loss %v%% each way, between two TUN devices (this kernel has no netem; %s)",
		delay, loss*100, netemMissing)
	return tn
}

// netemMissing is why netem cannot be used here, once a try failed.
var (
	netemMu      sync.Mutex
	netemMissing string
)

// newTunNet creates a namespace joined to the host by two TUN devices,
// one on each side, and a DelayLine between them; all of it is removed at
// cleanup. Names follow newVethNamespace's, so that a later run's sweep
// removes what a killed test left (the devices die with the process).
func newTunNet(t testing.TB, delay time.Duration, loss float64) *FaultNet {
	t.Helper()
	RequireBlackhole(t)
	sweepStaleBlackholes(t)
	seq := blackholeSeq.Add(1)
	pid := os.Getpid()
	n := &FaultNet{
		Name:   fmt.Sprintf("%s%d-%d", nsPrefix, pid, seq),
		HostIf: fmt.Sprintf("%s%dh%d", ifPrefix, pid, seq),
		NSIf:   fmt.Sprintf("%s%dn%d", ifPrefix, pid, seq),
		t:      t,
	}
	t.Cleanup(func() { (&Blackhole{Name: n.Name, HostIf: n.HostIf}).remove(t) })
	bhRun(t, "ip", "netns", "add", n.Name)
	host, err := openTun(n.HostIf)
	if err != nil {
		t.Fatalf("TUN device %s: %v", n.HostIf, err)
	}
	var inside *os.File
	if err := inNamespace(n.Name, func() error {
		var err error
		inside, err = openTun(n.NSIf)
		return err
	}); err != nil {
		host.Close()
		if inside != nil {
			inside.Close()
		}
		t.Fatalf("TUN device %s in %s: %v", n.NSIf, n.Name, err)
	}
	n.Line = startDelayLine(host, inside, delay, loss)
	t.Cleanup(n.Line.Stop)
	n.HostAddr, n.NSAddr = addSlash30(t, func(host, ns netip.Addr) {
		bhRun(t, "ip", "addr", "add", host.String(), "peer", netip.PrefixFrom(ns, 32).String(), "dev", n.HostIf)
	})
	bhRun(t, "ip", "link", "set", n.HostIf, "up")
	bhRun(t, "ip", "-n", n.Name, "addr", "add", n.NSAddr.String(), "peer", netip.PrefixFrom(n.HostAddr, 32).String(), "dev", n.NSIf)
	bhRun(t, "ip", "-n", n.Name, "link", "set", n.NSIf, "up")
	bhRun(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	out := bhRun(t, "ip", "-o", "route", "get", n.NSAddr.String())
	if !strings.Contains(" "+out+" ", " dev "+n.HostIf+" ") {
		t.Fatalf("%s does not route to %s: %q", n.NSAddr, n.HostIf, out)
	}
	return n
}

// openTun creates TUN device name (IP packets, no packet information
// header) in this thread's namespace; the device lives while the file is
// open. The file is non-blocking, so that Close ends a blocked Read.
func openTun(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// DelayLine moves IP packets between two TUN devices, both ways, each
// after a fixed delay, dropping a random share of them: what netem's
// delay and loss do, in this process.
type DelayLine struct {
	delay   time.Duration
	loss    float64
	files   []*os.File
	wg      sync.WaitGroup
	stop    sync.Once
	passed  atomic.Int64
	dropped atomic.Int64
}

// lineQueue bounds the packets in flight each way; more are dropped, as
// by a full queue of a real link.
const lineQueue = 16384

type linePacket struct {
	due time.Time
	b   []byte
}

func startDelayLine(a, b *os.File, delay time.Duration, loss float64) *DelayLine {
	d := &DelayLine{delay: delay, loss: loss, files: []*os.File{a, b}}
	d.run(a, b)
	d.run(b, a)
	return d
}

// run moves packets from src to dst until src is closed.
func (d *DelayLine) run(src, dst *os.File) {
	q := make(chan linePacket, lineQueue)
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		defer close(q)
		buf := make([]byte, 65536)
		for {
			n, err := src.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) {
					return
				}
				if errors.Is(err, unix.EIO) { // device not up yet
					time.Sleep(10 * time.Millisecond)
					continue
				}
				return
			}
			if rand.Float64() < d.loss {
				d.dropped.Add(1)
				continue
			}
			select {
			case q <- linePacket{due: time.Now().Add(d.delay), b: append([]byte(nil), buf[:n]...)}:
			default:
				d.dropped.Add(1)
			}
		}
	}()
	go func() {
		defer d.wg.Done()
		for p := range q {
			if w := time.Until(p.due); w > 0 {
				time.Sleep(w)
			}
			if _, err := dst.Write(p.b); err == nil {
				d.passed.Add(1)
			} else {
				d.dropped.Add(1)
			}
		}
	}()
}

// Stats are the packets moved and dropped so far (both ways).
func (d *DelayLine) Stats() (passed, dropped int64) {
	return d.passed.Load(), d.dropped.Load()
}

// Stop closes both devices and waits for the line's goroutines.
func (d *DelayLine) Stop() {
	d.stop.Do(func() {
		for _, f := range d.files {
			f.Close()
		}
		d.wg.Wait()
	})
}
