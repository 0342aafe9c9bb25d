package health

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
)

// BatchSigner signs this observer's vote batches (with the private key of
// its TLS certificate, in a cluster).
type BatchSigner interface {
	// SignBatch returns the signature of a marshalled VoteBatch.
	SignBatch(batch []byte) ([]byte, error)
	// MaxSignatureLen bounds the length of what SignBatch returns, so that
	// packets keep room for it.
	MaxSignatureLen() int
}

// BatchVerifier checks that a vote batch was signed by the observer it
// names. It is called on gossip's receive path: it must not block.
type BatchVerifier interface {
	// VerifyBatch returns nil when sig is observer's valid signature of
	// batch; an error wrapping ErrSignerUnknown when observer's key is not
	// known (yet); any other error when the signature does not verify.
	VerifyBatch(observer string, batch, sig []byte) error
}

// Verification errors, for the dropped-packet metric's reason label.
var (
	// ErrUnsigned: a packet without signature where signatures are required.
	ErrUnsigned = errors.New("vote batch is not signed")
	// ErrBadSignature: the signature is not the named observer's.
	ErrBadSignature = errors.New("vote batch signature does not verify")
	// ErrSignerUnknown: the named observer's key is not known yet.
	ErrSignerUnknown = errors.New("vote batch signer's key is not known yet")
)

// signatureContext separates vote signatures from every other use of the
// same key: TLS 1.3 signs 64 spaces and its own context string, so no TLS
// signature is a valid vote signature, and no vote signature a TLS one.
const signatureContext = "vigil gossip vote batch v1\x00"

// maxSignatureBytes bounds the signature accepted on the wire (RSA-8192).
const maxSignatureBytes = 1024

func signedMessage(batch []byte) []byte {
	msg := make([]byte, 0, len(signatureContext)+len(batch))
	return append(append(msg, signatureContext...), batch...)
}

// SignBatchWith signs a marshalled VoteBatch with key: ECDSA (ASN.1) and
// RSA (PSS) over SHA-256 of the context string and batch, Ed25519 over
// them directly.
func SignBatchWith(key crypto.Signer, batch []byte) ([]byte, error) {
	if key == nil {
		return nil, errors.New("sign vote batch: no key")
	}
	msg := signedMessage(batch)
	var (
		sig []byte
		err error
	)
	switch key.Public().(type) {
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		return nil, fmt.Errorf("sign vote batch: unsupported key type %T", key.Public())
	}
	if err != nil {
		return nil, fmt.Errorf("sign vote batch: %w", err)
	}
	return sig, nil
}

// VerifyBatchWith checks a signature made by SignBatchWith against the
// signer's public key; any failure wraps ErrBadSignature.
func VerifyBatchWith(pub crypto.PublicKey, batch, sig []byte) error {
	msg := signedMessage(batch)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, d[:], sig)
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		ok = rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	default:
		return fmt.Errorf("%w: unsupported key type %T", ErrBadSignature, pub)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}

// MaxSignatureLen is the longest signature SignBatchWith makes with the
// private key of pub (0 for an unsupported key type).
func MaxSignatureLen(pub crypto.PublicKey) int {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.SignatureSize
	case *ecdsa.PublicKey:
		// SEQUENCE of two INTEGERs, each at most one byte longer than the
		// curve's order (a leading zero).
		n := (k.Curve.Params().N.BitLen() + 7) / 8
		body := 2 * (2 + n + 1)
		if body < 128 {
			return 2 + body
		}
		return 3 + body
	case *rsa.PublicKey:
		return k.Size()
	default:
		return 0
	}
}

// KeySigner is a BatchSigner with a fixed key.
type KeySigner struct{ Key crypto.Signer }

var _ BatchSigner = KeySigner{}

// SignBatch implements BatchSigner.
func (s KeySigner) SignBatch(batch []byte) ([]byte, error) { return SignBatchWith(s.Key, batch) }

// MaxSignatureLen implements BatchSigner.
func (s KeySigner) MaxSignatureLen() int { return MaxSignatureLen(s.Key.Public()) }

// KeyVerifier is a BatchVerifier with a fixed public key per observer.
type KeyVerifier map[string]crypto.PublicKey

var _ BatchVerifier = KeyVerifier{}

// VerifyBatch implements BatchVerifier.
func (v KeyVerifier) VerifyBatch(observer string, batch, sig []byte) error {
	pub, ok := v[observer]
	if !ok {
		return fmt.Errorf("%w: %s", ErrSignerUnknown, observer)
	}
	return VerifyBatchWith(pub, batch, sig)
}
