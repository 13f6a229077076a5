package publish

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// An outbox record is one event as it goes on the wire:
//
//	uint32 body length | uint32 CRC-32C of body | body
//	body = uint16 subject length | uint16 msg id length | subject | msg id | data
//
// Integers are little-endian. The checksum lets recovery tell a record torn
// by a crash from a whole one.
const recordHeaderSize = 8

// maxRecordBody bounds the body length read back from disk so that a corrupt
// header cannot make recovery allocate without limit (a variable for the
// tests that need a smaller bound).
var maxRecordBody = 64 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errCorruptRecord = errors.New("corrupt outbox record")

// record is one decoded outbox record and where it sits.
type record struct {
	subject string
	msgID   string
	data    []byte
	// at is the position of the record; end the position just after it.
	at, end position
}

// position addresses a record in the outbox: its sequence number, the
// segment holding it and its byte offset there.
type position struct {
	seq uint64
	seg uint64
	off int64
}

// recordSize returns the encoded size of a record.
func recordSize(subject, msgID string, data []byte) int {
	return recordHeaderSize + 4 + min(len(subject), 0xffff) + min(len(msgID), 0xffff) + len(data)
}

// appendRecord appends the encoding of one record to buf.
func appendRecord(buf []byte, subject, msgID string, data []byte) []byte {
	buf, _ = appendRecordWith(buf, subject, msgID, func(b []byte) ([]byte, error) {
		return append(b, data...), nil
	})
	return buf
}

// appendRecordWith appends one record to buf whose data add appends in
// place, so that an event is encoded straight into its record. When add
// fails, buf is returned unextended with its error.
func appendRecordWith(buf []byte, subject, msgID string, add func([]byte) ([]byte, error)) ([]byte, error) {
	if len(subject) > 0xffff {
		subject = subject[:0xffff]
	}
	if len(msgID) > 0xffff {
		msgID = msgID[:0xffff]
	}
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, 0) // body length, filled below
	buf = binary.LittleEndian.AppendUint32(buf, 0) // checksum, filled below
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(subject)))
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(msgID)))
	buf = append(buf, subject...)
	buf = append(buf, msgID...)
	out, err := add(buf)
	if err != nil {
		return buf[:start], err
	}
	buf = out
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(buf)-start-recordHeaderSize))
	sum := crc32.Checksum(buf[start+recordHeaderSize:], crcTable)
	binary.LittleEndian.PutUint32(buf[start+4:], sum)
	return buf, nil
}

// peekRecordLen returns the total encoded length of the record whose header
// starts b, or an error when the header is not plausible.
func peekRecordLen(b []byte) (int, error) {
	if len(b) < recordHeaderSize {
		return 0, errCorruptRecord
	}
	n := binary.LittleEndian.Uint32(b)
	if n < 4 || int64(n) > int64(maxRecordBody) {
		return 0, errCorruptRecord
	}
	return recordHeaderSize + int(n), nil
}

// decodeRecord decodes the record that b holds exactly. The returned data
// aliases b.
func decodeRecord(b []byte) (subject, msgID string, data []byte, err error) {
	n, err := peekRecordLen(b)
	if err != nil || n != len(b) {
		return "", "", nil, errCorruptRecord
	}
	body := b[recordHeaderSize:]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[4:]) {
		return "", "", nil, errCorruptRecord
	}
	sl := int(binary.LittleEndian.Uint16(body))
	il := int(binary.LittleEndian.Uint16(body[2:]))
	if 4+sl+il > len(body) {
		return "", "", nil, errCorruptRecord
	}
	subject = string(body[4 : 4+sl])
	msgID = string(body[4+sl : 4+sl+il])
	return subject, msgID, body[4+sl+il:], nil
}
