package kernel

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"

	"github.com/codegw/codegw"
)

// ProtocolVersion is the Jupyter messaging protocol version we speak.
const ProtocolVersion = "5.3"

// delimiter separates routing identities from the signed message.
var delimiter = []byte("<IDS|MSG>")

// maxIdentities bounds the search for the delimiter: kernels send at most a
// topic frame or a router identity or two before it.
const maxIdentities = 16

// Header is a Jupyter message header. Date is kept as the kernel sent it:
// parsing every date costs CPU on the hot path and nothing here needs it.
type Header struct {
	MsgID    string `json:"msg_id"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	MsgType  string `json:"msg_type"`
	Version  string `json:"version"`
}

// Message is one decoded Jupyter message. Content is left raw for the caller
// to decode into the type the msg_type calls for.
type Message struct {
	Identities   [][]byte
	Header       Header
	ParentHeader Header
	Metadata     json.RawMessage
	Content      json.RawMessage
	Buffers      [][]byte
}

// Decode errors. Every malformed or forged frame set yields an error wrapping
// ErrMalformed or ErrSignature; Decode never panics.
var (
	ErrMalformed = errors.New("kernel: malformed message")
	ErrSignature = errors.New("kernel: bad message signature")
)

// Signer computes and checks HMAC-SHA256 signatures. A Signer with an empty
// key signs with "" and accepts only an empty signature, as Jupyter does.
// It is not safe for concurrent use; each socket reader owns one.
type Signer struct {
	key []byte
	mac hash.Hash
}

// NewSigner returns a Signer for key.
func NewSigner(key string) *Signer {
	s := &Signer{key: []byte(key)}
	if len(key) > 0 {
		s.mac = hmac.New(sha256.New, s.key)
	}
	return s
}

func (s *Signer) sum(parts ...[]byte) []byte {
	if s.mac == nil {
		return nil
	}
	s.mac.Reset()
	for _, p := range parts {
		s.mac.Write(p)
	}
	return s.mac.Sum(nil)
}

// Encode returns the wire frames of msg, signed. Metadata and Content default
// to {} when empty.
func (s *Signer) Encode(msg *Message) ([][]byte, error) {
	header, err := json.Marshal(msg.Header)
	if err != nil {
		return nil, fmt.Errorf("kernel: encode header: %w", err)
	}
	parent := []byte("{}")
	if msg.ParentHeader.MsgID != "" {
		if parent, err = json.Marshal(msg.ParentHeader); err != nil {
			return nil, fmt.Errorf("kernel: encode parent header: %w", err)
		}
	}
	meta := orEmptyObject(msg.Metadata)
	content := orEmptyObject(msg.Content)
	sig := hex.EncodeToString(s.sum(header, parent, meta, content))

	frames := make([][]byte, 0, len(msg.Identities)+6+len(msg.Buffers))
	frames = append(frames, msg.Identities...)
	frames = append(frames, delimiter, []byte(sig), header, parent, meta, content)
	frames = append(frames, msg.Buffers...)
	return frames, nil
}

func orEmptyObject(b json.RawMessage) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// Decode parses and verifies the frames of one message.
func (s *Signer) Decode(frames [][]byte) (*Message, error) {
	ids, rest, err := s.verify(frames)
	if err != nil {
		return nil, err
	}
	header, parent, meta, content := rest[1], rest[2], rest[3], rest[4]
	msg := &Message{Identities: ids, Metadata: meta, Content: content}
	if err := json.Unmarshal(header, &msg.Header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if msg.Header.MsgType == "" {
		return nil, fmt.Errorf("%w: header has no msg_type", ErrMalformed)
	}
	if err := json.Unmarshal(parent, &msg.ParentHeader); err != nil {
		return nil, fmt.Errorf("%w: parent header: %v", ErrMalformed, err)
	}
	if !json.Valid(content) || (len(meta) > 0 && !json.Valid(meta)) {
		return nil, fmt.Errorf("%w: content or metadata is not JSON", ErrMalformed)
	}
	if len(rest) > 5 {
		msg.Buffers = rest[5:]
	}
	return msg, nil
}

// verify finds the delimiter in frames and checks the signature, returning
// the routing identities and the frames after the delimiter (signature,
// header, parent header, metadata, content, buffers).
func (s *Signer) verify(frames [][]byte) (ids, rest [][]byte, err error) {
	idx := -1
	for i := 0; i < len(frames) && i <= maxIdentities; i++ {
		if bytes.Equal(frames[i], delimiter) {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, nil, fmt.Errorf("%w: no delimiter in the first %d of %d frames", ErrMalformed, maxIdentities+1, len(frames))
	}
	rest = frames[idx+1:]
	if len(rest) < 5 {
		return nil, nil, fmt.Errorf("%w: %d frames after the delimiter, want at least 5", ErrMalformed, len(rest))
	}
	sig := rest[0]
	if s.mac != nil {
		want := s.sum(rest[1], rest[2], rest[3], rest[4])
		got := make([]byte, hex.DecodedLen(len(sig)))
		n, err := hex.Decode(got, sig)
		if err != nil || !hmac.Equal(got[:n], want) {
			return nil, nil, ErrSignature
		}
	} else if len(sig) != 0 {
		return nil, nil, ErrSignature
	}
	return frames[:idx], rest, nil
}

// NewMessage returns a message of msgType in session with content, ready to
// Encode. content may be a json.RawMessage or any value json can encode.
func NewMessage(session, msgType string, content any) (*Message, error) {
	raw, ok := content.(json.RawMessage)
	if !ok {
		b, err := json.Marshal(content)
		if err != nil {
			return nil, fmt.Errorf("kernel: encode %s content: %w", msgType, err)
		}
		raw = b
	}
	return &Message{
		Header: Header{
			MsgID:    codegw.NewID(),
			Session:  session,
			Username: "codegw",
			Date:     time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
			MsgType:  msgType,
			Version:  ProtocolVersion,
		},
		Content: raw,
	}, nil
}
