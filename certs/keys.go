package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// KeyType is the algorithm of a generated key.
type KeyType string

// The key types. ECDSA keys are always P-256.
const (
	KeyECDSA KeyType = "ecdsa"
	KeyRSA   KeyType = "rsa"
)

// DefaultRSABits is the RSA modulus size when KeySpec.RSABits is zero.
const DefaultRSABits = 3072

// KeySpec says what key to generate. The zero value is ECDSA P-256.
type KeySpec struct {
	// Type is KeyECDSA or KeyRSA; "" means KeyECDSA.
	Type KeyType
	// RSABits is the RSA modulus size: 2048, 3072 or 4096; 0 means
	// DefaultRSABits. It must be 0 for ECDSA.
	RSABits int
}

// Validate names the field at fault and the allowed values.
func (k KeySpec) Validate() error {
	switch k.Type {
	case "", KeyECDSA:
		if k.RSABits != 0 {
			return fmt.Errorf("key: RSA bits (%d) given for an ECDSA key; use key type %q or drop the bits", k.RSABits, KeyRSA)
		}
	case KeyRSA:
		switch k.RSABits {
		case 0, 2048, 3072, 4096:
		default:
			return fmt.Errorf("key: RSA bits %d: allowed are 2048, 3072 and 4096", k.RSABits)
		}
	default:
		return fmt.Errorf("key: type %q: allowed are %q and %q", k.Type, KeyECDSA, KeyRSA)
	}
	return nil
}

// String is "ecdsa-p256" or "rsa-3072".
func (k KeySpec) String() string {
	if k.Type == KeyRSA {
		return fmt.Sprintf("rsa-%d", k.bits())
	}
	return "ecdsa-p256"
}

func (k KeySpec) bits() int {
	if k.RSABits == 0 {
		return DefaultRSABits
	}
	return k.RSABits
}

func (k KeySpec) generate() (crypto.Signer, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	if k.Type == KeyRSA {
		key, err := rsa.GenerateKey(rand.Reader, k.bits())
		if err != nil {
			return nil, fmt.Errorf("generate RSA key: %w", err)
		}
		return key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA key: %w", err)
	}
	return key, nil
}

// ParsePrivateKeyPEM reads the first private key in b: PKCS#8 ("PRIVATE
// KEY", what isthmus writes), PKCS#1 ("RSA PRIVATE KEY", what kubeadm writes
// for its CA) or SEC 1 ("EC PRIVATE KEY").
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		default:
			continue // e.g. "EC PARAMETERS" before the key
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key of type %T cannot sign", blk.Type, k)
		}
		return s, nil
	}
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
