package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"mime/multipart"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/inputs"
)

// LibreChatPrefix is where LibreChat's Code Interpreter API is served:
// LIBRECHAT_CODE_BASEURL=http://codegw:14564/librechat.
const LibreChatPrefix = "/librechat"

// libreLangs are the languages /librechat/exec runs, by LibreChat's names.
var libreLangs = map[string]string{"py": "python", "python": "python", "python3": "python", "js": "javascript", "javascript": "javascript", "node": "javascript"}

// libreSupported is the list an unsupported language is answered with.
const libreSupported = "py, js"

// libreDataDir is the directory LibreChat tells models to use; codegw runs
// the code in the session's own directory and rewrites the path to it.
const libreDataDir = "/mnt/data"

// libreMaxFiles bounds the files one LibreChat session keeps and one exec
// returns.
const libreMaxFiles = 100

// libreID is the shape of session and file ids (codegw.NewID prefixes).
var libreID = regexp.MustCompile(`^[a-z0-9]{1,64}$`)

// libreFile is a stored file's metadata, kept beside its bytes.
type libreFile struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
	SHA256   string    `json:"sha256"`
}

// libreRoutes mounts LibreChat's Code Interpreter API under LibreChatPrefix:
// POST exec, POST upload, GET files/:session_id, GET
// download/:session_id/:file_id, DELETE files/:session_id/:file_id. The
// key comes in x-api-key (or a Bearer header).
func (s *Server) libreRoutes() {
	g := s.app.Group(LibreChatPrefix, s.libreAuth, s.limitRate)
	g.Post("/exec", s.libreExec)
	g.Post("/upload", s.libreUpload)
	g.Get("/files/:session_id", s.libreList)
	g.Get("/download/:session_id/:file_id", s.libreDownload)
	g.Delete("/files/:session_id/:file_id", s.libreDelete)
}

func (s *Server) libreAuth(c *fiber.Ctx) error {
	key := apiKeyHeader(c)
	o, ok := s.keyOwner(key)
	if !ok {
		if key == "" {
			return codegw.Errorf(codegw.EUNAUTHORIZED, "missing API key: send x-api-key")
		}
		return codegw.Errorf(codegw.EUNAUTHORIZED, "unknown API key")
	}
	c.Locals("owner", o)
	return c.Next()
}

// libreDir returns the directory of owner's session id, "" when id is not
// an id. Each key has a directory of its own: another key's ids are not
// found.
func (s *Server) libreDir(owner, id string) string {
	if !libreID.MatchString(id) || s.cfg.LibreChatDir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(owner))
	return filepath.Join(s.cfg.LibreChatDir, codegwHex(sum[:8]), id)
}

func codegwHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func errNoSession(id string) error {
	return codegw.Errorf(codegw.ENOTFOUND, "session %q not found", id)
}

// libreSession returns owner's existing session directory.
func (s *Server) libreSession(owner, id string) (string, error) {
	dir := s.libreDir(owner, id)
	if dir == "" {
		return "", errNoSession(id)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", errNoSession(id)
	}
	return dir, nil
}

// newLibreSession makes a session directory for owner.
func (s *Server) newLibreSession(owner string) (string, string, error) {
	s.sweepLibre()
	id := codegw.NewID()[:21]
	dir := s.libreDir(owner, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", codegw.WrapError(codegw.EINTERNAL, err, "create session directory")
	}
	return id, dir, nil
}

// libreFiles lists a session's files, oldest first.
func libreFiles(dir string) []libreFile {
	entries, _ := os.ReadDir(dir)
	var out []libreFile
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		var f libreFile
		if err != nil || json.Unmarshal(b, &f) != nil || !libreID.MatchString(f.ID) {
			continue
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Modified.Before(out[j].Modified) })
	return out
}

// libreGet returns a session's file.
func libreGet(dir, id string) (libreFile, error) {
	var f libreFile
	if !libreID.MatchString(id) {
		return f, codegw.Errorf(codegw.ENOTFOUND, "file %q not found", id)
	}
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil || json.Unmarshal(b, &f) != nil {
		return f, codegw.Errorf(codegw.ENOTFOUND, "file %q not found", id)
	}
	return f, nil
}

// librePut stores r as the file name in dir (a new id), at most max bytes.
// A file of the same name is replaced, as a path in /mnt/data would be.
func librePut(dir, name string, r io.Reader, max int64) (libreFile, error) {
	clean := inputs.SanitizeName(name)
	if clean == "" {
		return libreFile{}, codegw.Errorf(codegw.EINVALID, "invalid file name %q", name)
	}
	old := libreFiles(dir)
	if len(old) >= libreMaxFiles {
		return libreFile{}, codegw.Errorf(codegw.ETOOLARGE, "the session has %d files; the limit is %d", len(old), libreMaxFiles)
	}
	f := libreFile{ID: codegw.NewID()[:21], Name: clean, Modified: time.Now()}
	tmp, err := os.CreateTemp(dir, ".put-*")
	if err != nil {
		return f, codegw.WrapError(codegw.EINTERNAL, err, "store file")
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, max+1))
	tmp.Close()
	if err == nil && n > max {
		err = codegw.Errorf(codegw.ETOOLARGE, "file %q is larger than %d bytes", name, max)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, f.ID))
	}
	if err != nil {
		os.Remove(tmp.Name())
		if codegw.ErrorCode(err) == codegw.EINTERNAL {
			return f, codegw.WrapError(codegw.EINTERNAL, err, "store file")
		}
		return f, err
	}
	f.Size, f.SHA256 = n, codegwHex(h.Sum(nil))
	meta, _ := json.Marshal(f)
	if err := os.WriteFile(filepath.Join(dir, f.ID+".json"), meta, 0o600); err != nil {
		os.Remove(filepath.Join(dir, f.ID))
		return f, codegw.WrapError(codegw.EINTERNAL, err, "store file")
	}
	for _, o := range old {
		if o.Name == clean {
			libreRemove(dir, o.ID)
		}
	}
	return f, nil
}

func libreRemove(dir, id string) {
	os.Remove(filepath.Join(dir, id+".json"))
	os.Remove(filepath.Join(dir, id))
}

// sweepLibre removes, at most every ten minutes, the session directories
// untouched for longer than the store's retention.
func (s *Server) sweepLibre() {
	now := time.Now()
	last := s.libreSwept.Load()
	if now.Unix()-last < 600 || !s.libreSwept.CompareAndSwap(last, now.Unix()) {
		return
	}
	keep := s.cfg.LibreChatRetention
	if keep <= 0 {
		return
	}
	owners, _ := os.ReadDir(s.cfg.LibreChatDir)
	for _, o := range owners {
		sessions, _ := os.ReadDir(filepath.Join(s.cfg.LibreChatDir, o.Name()))
		for _, sd := range sessions {
			if fi, err := sd.Info(); err == nil && now.Sub(fi.ModTime()) > keep {
				os.RemoveAll(filepath.Join(s.cfg.LibreChatDir, o.Name(), sd.Name()))
			}
		}
	}
}

// libreUpload stores the files of a multipart upload in a new session (or
// the one named by a session_id field), as LibreChat's uploadCodeEnvFile
// expects: {message: "success", session_id, files: [{fileId, filename}]}.
func (s *Server) libreUpload(c *fiber.Ctx) error {
	form, err := c.MultipartForm()
	if err != nil {
		return codegw.Errorf(codegw.EINVALID, "send the file as multipart/form-data: %v", err)
	}
	var fhs []*multipart.FileHeader
	for _, list := range form.File {
		fhs = append(fhs, list...)
	}
	if len(fhs) == 0 {
		return codegw.Errorf(codegw.EINVALID, "no file in the upload: send it in the field \"file\"")
	}
	o := owner(c)
	var id, dir string
	if v := form.Value["session_id"]; len(v) > 0 && v[0] != "" {
		id = v[0]
		if dir, err = s.libreSession(o, id); err != nil {
			return err
		}
	} else if id, dir, err = s.newLibreSession(o); err != nil {
		return err
	}
	out := []fiber.Map{}
	for _, fh := range fhs {
		if fh.Size > s.cfg.UploadLimit {
			return codegw.Errorf(codegw.ETOOLARGE, "file %q is larger than %d bytes", fh.Filename, s.cfg.UploadLimit)
		}
		r, err := fh.Open()
		if err != nil {
			return codegw.Errorf(codegw.EINVALID, "read upload %q: %v", fh.Filename, err)
		}
		f, err := librePut(dir, fh.Filename, r, s.cfg.UploadLimit)
		r.Close()
		if err != nil {
			return err
		}
		out = append(out, fiber.Map{"fileId": f.ID, "filename": f.Name, "id": f.ID, "name": f.Name, "size": f.Size})
	}
	return c.JSON(fiber.Map{"message": "success", "session_id": id, "files": out})
}

// libreEntry is a file as /files lists it: name is "session_id/file_id",
// which LibreChat matches its file identifiers against, and the original
// name is in metadata["original-filename"], where @librechat/agents reads
// it.
func libreEntry(sid string, f libreFile) fiber.Map {
	return fiber.Map{"name": sid + "/" + f.ID, "id": f.ID, "session_id": sid, "filename": f.Name,
		"size": f.Size, "lastModified": f.Modified.UTC().Format(time.RFC3339Nano), "path": libreDataDir + "/" + f.Name,
		"metadata": fiber.Map{"original-filename": f.Name}}
}

func (s *Server) libreList(c *fiber.Ctx) error {
	sid := c.Params("session_id")
	dir, err := s.libreSession(owner(c), sid)
	if err != nil {
		return err
	}
	out := []fiber.Map{}
	for _, f := range libreFiles(dir) {
		out = append(out, libreEntry(sid, f))
	}
	return c.JSON(out)
}

func (s *Server) libreDownload(c *fiber.Ctx) error {
	dir, err := s.libreSession(owner(c), c.Params("session_id"))
	if err != nil {
		return err
	}
	f, err := libreGet(dir, c.Params("file_id"))
	if err != nil {
		return err
	}
	r, err := os.Open(filepath.Join(dir, f.ID))
	if err != nil {
		return codegw.Errorf(codegw.ENOTFOUND, "file %q not found", f.ID)
	}
	c.Set(fiber.HeaderContentType, "application/octet-stream")
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set(fiber.HeaderContentDisposition, contentDisposition(f.Name))
	return c.SendStream(r, int(f.Size))
}

func (s *Server) libreDelete(c *fiber.Ctx) error {
	dir, err := s.libreSession(owner(c), c.Params("session_id"))
	if err != nil {
		return err
	}
	f, err := libreGet(dir, c.Params("file_id"))
	if err != nil {
		return err
	}
	libreRemove(dir, f.ID)
	return c.JSON(fiber.Map{"message": "success"})
}

// libreRequest is the body of /exec. Files name stored files to put in the
// working directory beside the session's own: session_id (or
// storage_session_id, the newer name) and id.
type libreRequest struct {
	Lang      *string  `json:"lang"`
	Code      *string  `json:"code"`
	Args      []string `json:"args"`
	SessionID string   `json:"session_id"`
	Files     []struct {
		ID               string `json:"id"`
		SessionID        string `json:"session_id"`
		StorageSessionID string `json:"storage_session_id"`
		Name             string `json:"name"`
	} `json:"files"`
}

// decodeLibreExec parses an /exec body and returns it with the language's
// runtime (python, javascript).
func decodeLibreExec(body []byte) (libreRequest, string, error) {
	var req libreRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, "", codegw.Errorf(codegw.EINVALID, "request body is not a JSON object like {\"lang\": \"py\", \"code\": \"print(1)\"}: %v", err)
	}
	if req.Lang == nil || *req.Lang == "" {
		return req, "", codegw.Errorf(codegw.EINVALID, "lang is required; supported: %s", libreSupported)
	}
	lang, ok := libreLangs[strings.ToLower(*req.Lang)]
	if !ok {
		return req, "", codegw.Errorf(codegw.EINVALID, "unsupported language %q; supported: %s", *req.Lang, libreSupported)
	}
	if req.Code == nil || strings.TrimSpace(*req.Code) == "" {
		return req, "", codegw.Errorf(codegw.EINVALID, "code is required")
	}
	if len(req.Args) > 100 {
		return req, "", codegw.Errorf(codegw.EINVALID, "at most 100 args")
	}
	return req, lang, nil
}

// libreExec runs code as LibreChat's tool asks: in a fresh kernel (each
// call a new process: variables do not persist), in a working directory
// holding the session's files and the files named, where /mnt/data is
// rewritten to. New and changed files are stored in the session and
// listed with their ids; images the code displays are stored as files too.
func (s *Server) libreExec(c *fiber.Ctx) error {
	body := c.Body()
	if len(body) > s.cfg.BodyLimit {
		return codegw.Errorf(codegw.ETOOLARGE, "request body is %d bytes; the limit is %d", len(body), s.cfg.BodyLimit)
	}
	req, lang, err := decodeLibreExec(body)
	if err != nil {
		return err
	}
	o := owner(c)
	sid, dir := req.SessionID, ""
	if sid != "" {
		if dir, err = s.libreSession(o, sid); err != nil {
			return err
		}
	} else if sid, dir, err = s.newLibreSession(o); err != nil {
		return err
	}
	// The inputs: the session's files, then those named (which win).
	type input struct {
		path string
		f    libreFile
	}
	given := map[string]input{}
	for _, f := range libreFiles(dir) {
		given[f.Name] = input{filepath.Join(dir, f.ID), f}
	}
	if len(req.Files) > libreMaxFiles {
		return codegw.Errorf(codegw.ETOOLARGE, "%d files; the limit is %d", len(req.Files), libreMaxFiles)
	}
	for _, ref := range req.Files {
		rsid := cmpOr(ref.StorageSessionID, ref.SessionID, sid)
		rdir, err := s.libreSession(o, rsid)
		if err != nil {
			return codegw.Errorf(codegw.ENOTFOUND, "file %q of session %q not found", ref.ID, rsid)
		}
		f, err := libreGet(rdir, ref.ID)
		if err != nil {
			return err
		}
		if ref.Name != "" && inputs.SanitizeName(ref.Name) != "" {
			f.Name = inputs.SanitizeName(ref.Name)
		}
		given[f.Name] = input{filepath.Join(rdir, f.ID), f}
	}

	release, err := s.holdExecution(c)
	if err != nil {
		return err
	}
	defer release()
	ctx := c.UserContext()
	sess, err := s.cfg.Manager.Create(ctx, o, session.CreateOptions{})
	if err != nil {
		return err
	}
	defer s.cfg.Manager.Delete(sess.ID(), o)
	work := filepath.Join(sess.Kernel().Process().Dir(), "output")
	for name, in := range given {
		if err := copyInto(work, name, in.path); err != nil {
			return err
		}
	}
	const kernelWork = "/code/output"
	code := strings.ReplaceAll(*req.Code, libreDataDir, kernelWork)
	cell := "import os as _cg_os\n_cg_os.chdir(" + pyString(kernelWork) + ")\n"
	if lang == "javascript" {
		cell += nodeCell(code, req.Args)
	} else {
		cell += pythonCell(code)
	}
	res, err := sess.Execute(ctx, codegw.ExecuteRequest{Code: cell}, nil)
	if err != nil {
		return err
	}
	out := []fiber.Map{}
	collect := func(name string, r io.Reader) error {
		if len(out) >= libreMaxFiles {
			return nil
		}
		f, err := librePut(dir, name, r, s.cfg.UploadLimit)
		if err != nil {
			if codegw.ErrorCode(err) == codegw.EINTERNAL {
				return err
			}
			return nil // over a limit: not kept
		}
		out = append(out, fiber.Map{"id": f.ID, "name": f.Name, "path": libreDataDir + "/" + f.Name, "session_id": sid, "storage_session_id": sid, "size": f.Size})
		return nil
	}
	entries, _ := os.ReadDir(work)
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := readFileMax(filepath.Join(work, e.Name()), s.cfg.UploadLimit)
		if err != nil {
			continue
		}
		sum := sha256.Sum256(b)
		if in, ok := given[e.Name()]; ok && in.f.SHA256 == codegwHex(sum[:]) {
			continue // unchanged input
		}
		if err := collect(e.Name(), bytes.NewReader(b)); err != nil {
			return err
		}
	}
	for i, img := range res.Images {
		name := img[strings.LastIndexByte(img, '/')+1:]
		obj, err := s.cfg.Images.Open(name)
		if err != nil {
			continue
		}
		err = collect("image_"+itoa(i+1)+filepath.Ext(name), obj.File)
		obj.File.Close()
		if err != nil {
			return err
		}
	}
	stderr := res.Stderr
	if res.Status != codegw.StatusOK && res.EName != scriptExitName {
		stderr += strOr(res.Error) + "\n"
	}
	answer := fiber.Map{"session_id": sid, "stdout": res.Stdout, "stderr": stderr, "files": out}
	if res.Status == codegw.StatusTimeout {
		answer["error"] = "Execution failed or timed out"
	} else if res.Status == codegw.StatusOOM {
		answer["error"] = "Out of memory"
	} else if res.Status != codegw.StatusOK {
		answer["error"] = "Sandbox exited with code " + itoa(scriptExit(res))
	}
	return c.JSON(answer)
}

func cmpOr(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// pyString quotes s as a Python string literal (JSON's is one).
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// copyInto copies the stored file src into dir/name, writable by the
// kernel (its uid is not the gateway's).
func copyInto(dir, name, src string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return codegw.WrapError(codegw.EINTERNAL, err, "open working directory")
	}
	defer root.Close()
	in, err := os.Open(src)
	if err != nil {
		return codegw.Errorf(codegw.ENOTFOUND, "file %q not found", name)
	}
	defer in.Close()
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return codegw.WrapError(codegw.EINTERNAL, err, "stage file")
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(name, 0o666)
	}
	if err != nil {
		return codegw.WrapError(codegw.EINTERNAL, err, "stage file")
	}
	return nil
}

// readFileMax reads a regular file of at most max bytes, never through a
// symlink (the kernel wrote the directory).
func readFileMax(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > max {
		return nil, fs.ErrInvalid
	}
	return io.ReadAll(io.LimitReader(f, max))
}
