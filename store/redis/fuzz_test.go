package redis

import (
	"strconv"
	"testing"
)

// FuzzParseSession feeds arbitrary session hashes, as another instance or
// anyone with access to Redis may have left them, to the record decoder:
// a hash without an id is missing, any other decodes without panicking.
func FuzzParseSession(f *testing.F) {
	f.Add("s1", "owner", "inst-1", strconv.FormatInt(1764201600000000000, 10))
	f.Add("", "o", "i", "0")
	f.Add("s2", "", "", "-9223372036854775808")
	f.Add("s3", "o", "i", "99999999999999999999")
	f.Add("s4", "o\x00", "i", "1e9")
	f.Fuzz(func(t *testing.T, id, owner, instance, created string) {
		h := map[string]string{"id": id, "owner": owner, "instance": instance, "created_at": created}
		rec, ok := parseSession(h)
		if ok != (id != "") {
			t.Fatalf("id %q: ok %v", id, ok)
		}
		if ok && (rec.ID != id || rec.Owner != owner || rec.Instance != instance) {
			t.Fatalf("record %+v from %v", rec, h)
		}
	})
}
