package certs

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// State is a certificate's standing against a warning threshold.
type State int

// The states, from good to bad.
const (
	Valid       State = iota // valid now and beyond the threshold
	Expiring                 // valid now, expires within the threshold
	NotYetValid              // NotBefore is in the future
	Expired                  // NotAfter is in the past
)

func (s State) String() string {
	switch s {
	case Valid:
		return "ok"
	case Expiring:
		return "EXPIRING"
	case NotYetValid:
		return "NOT YET VALID"
	case Expired:
		return "EXPIRED"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Status is one certificate's expiry, as of a moment.
type Status struct {
	Source    string // the file (and the entry in it) the certificate came from
	Subject   string // common name
	IsCA      bool
	NotBefore time.Time
	NotAfter  time.Time
	Remaining time.Duration // NotAfter - now; negative once expired
	State     State
}

// Check rates each certificate at now against warnWithin: a certificate
// that expires at or before now+warnWithin is Expiring.
func Check(source string, certs []*x509.Certificate, now time.Time, warnWithin time.Duration) []Status {
	out := make([]Status, 0, len(certs))
	for i, c := range certs {
		s := Status{
			Source: source, Subject: c.Subject.CommonName, IsCA: c.IsCA,
			NotBefore: c.NotBefore, NotAfter: c.NotAfter, Remaining: c.NotAfter.Sub(now),
		}
		if len(certs) > 1 {
			s.Source = fmt.Sprintf("%s[%d]", source, i)
		}
		switch {
		case !now.Before(c.NotAfter):
			s.State = Expired
		case now.Before(c.NotBefore):
			s.State = NotYetValid
		case s.Remaining <= warnWithin:
			s.State = Expiring
		default:
			s.State = Valid
		}
		out = append(out, s)
	}
	return out
}

// CheckFile is Check for every certificate in a PEM file.
func CheckFile(path string, now time.Time, warnWithin time.Duration) ([]Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	return Check(path, certs, now, warnWithin), nil
}

// Worst is the worst state among statuses (Valid for none).
func Worst(statuses []Status) State {
	w := Valid
	for _, s := range statuses {
		w = max(w, s.State)
	}
	return w
}

// ParseCertificatesPEM reads every CERTIFICATE block of b, skipping other
// blocks; no certificate at all is an error.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}
