// Command potdcheck verifies potd ledger artefacts with Go's reference implementation,
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog, and nothing else.
// It exists so potd's Python tests can prove that a Go client accepts what potd emits
// (docs/protocol.md §2): signed checkpoints, inclusion and consistency proofs, and a static
// C2SP tlog-tiles mirror (hash tiles and entry bundles).
//
// Build (Debian's golang-golang-x-mod-dev, GOPATH mode):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o potdcheck .
//
// Usage: potdcheck < request.json > result.json
//
// Request (one JSON object on stdin; unknown fields are an error):
//
//	{
//	  "vkey":        "<name>+<hex8>+<base64>",  // log verifier key (required)
//	  "checkpoint":  "<signed note text>",      // optional if tiles_dir holds "checkpoint"
//	  "origin":      "potd.example/log1",       // optional; default: the vkey's name
//	  "roots":       {"<size>": "<b64 root>"},  // roots of older tree sizes (optional)
//	  "inclusion":   [{"index": I, "leaf_hash": "<b64>", "size": S, "proof": ["<b64>", ...]}],
//	  "consistency": [{"from": M, "to": N, "proof": ["<b64>", ...]}],
//	  "tiles_dir":   "/path/to/static/mirror",  // optional
//	  "sample":      2000                       // optional; max records proved from tiles
//	}
//
// Checks, in order; the first failure prints "potdcheck: FAIL: <reason>" on stderr and
// exits 1 (a malformed request or usage error exits 2):
//
//  1. The checkpoint is opened with note.Open(msg, note.VerifierList(note.NewVerifier(vkey)))
//     and its C2SP tlog-checkpoint body is parsed here (origin line, decimal size without
//     leading zeros, base64 std 32-byte root, then non-empty extension lines);
//     tlog.ParseTree is not used because it expects the "go.sum database tree" header.
//     The origin must equal "origin" (default: the key name). A size-0 checkpoint must
//     carry the RFC 6962 empty root SHA-256("").
//  2. With tiles_dir: a tlog.TileReader of height 8 maps Go's tile paths
//     "tile/8/L/N[.p/W]" to C2SP's "tile/L/N[.p/W]" under tiles_dir. When the exact
//     partial tile is missing, the full tile or the narrowest wider partial is read and
//     truncated to W*32 bytes. Every hash tile of the checkpoint's tree is read and
//     authenticated first (authenticateTiles: each full tile must hash to its entry in
//     its parent, and the right-edge tiles must give the signed root), and the reader is
//     then sealed to those bytes. This is needed because tlog.TileHashReader in x/mod
//     before v0.40.0 (Debian ships 0.7.0) skips some tiles it should authenticate
//     (CVE-2026-56865, go.dev/issue/80744). Then, through
//     tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, r):
//     a. tlog.TreeHash(size) must equal the checkpoint root;
//     b. every root in "roots" must equal tlog.TreeHash(thatSize);
//     c. tlog.ProveRecord for every record (at most "sample" records, always including
//     both ends and tile edges) and tlog.ProveTree for several older sizes, each
//     checked with tlog.CheckRecord / tlog.CheckTree;
//     d. every entry bundle tile/entries/N[.p/W] (uint16 BE length || entry, same
//     wider-tile fallback) is parsed and tlog.RecordHash(entry) must equal the
//     authenticated level-0 stored hash tlog.StoredHashIndex(0, i) of each record.
//  3. Each "inclusion" item: tlog.CheckRecord(proof, size, root(size), index, leaf_hash).
//     With tiles, the proof must also be byte-identical to tlog.ProveRecord's.
//  4. Each "consistency" item: tlog.CheckTree(proof, to, root(to), from, root(from));
//     from == 0 needs an empty proof (every tree extends the empty tree). With tiles,
//     the proof must also be byte-identical to tlog.ProveTree's.
//
// root(size) is the checkpoint root when size is the checkpoint size, else roots[size].
// No root is taken on trust: every root in "roots" must be authenticated, either by 2b
// or by a passing consistency proof to an authenticated root (the checkpoint's or one
// authenticated before); an unauthenticated root is a failure.
//
// Result (stdout, on success): a JSON object of counts, e.g.
//
//	{"ok": true, "origin": "...", "size": 1000, "root": "<b64>", "signatures": 1,
//	 "roots_from_tiles": 3, "roots_from_consistency": 0, "inclusion_checked": 1000,
//	 "consistency_checked": 5, "proofs_matched": 1005, "tile_tree_hash": true,
//	 "tile_record_proofs": 1000, "tile_tree_proofs": 12, "entries_checked": 1000,
//	 "bundles_read": 4, "tiles_read": 5, "tile_fallbacks": 0}
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const tileHeight = 8

type inclusionItem struct {
	Index    *int64   `json:"index"`
	LeafHash string   `json:"leaf_hash"`
	Size     *int64   `json:"size"`
	Proof    []string `json:"proof"`
}

type consistencyItem struct {
	From  *int64   `json:"from"`
	To    *int64   `json:"to"`
	Proof []string `json:"proof"`
}

type request struct {
	Vkey        string            `json:"vkey"`
	Checkpoint  string            `json:"checkpoint"`
	Origin      string            `json:"origin"`
	Roots       map[string]string `json:"roots"`
	Inclusion   []inclusionItem   `json:"inclusion"`
	Consistency []consistencyItem `json:"consistency"`
	TilesDir    string            `json:"tiles_dir"`
	Sample      int               `json:"sample"`
}

type result struct {
	OK                   bool   `json:"ok"`
	Origin               string `json:"origin"`
	Size                 int64  `json:"size"`
	Root                 string `json:"root"`
	Signatures           int    `json:"signatures"`
	RootsFromTiles       int    `json:"roots_from_tiles"`
	RootsFromConsistency int    `json:"roots_from_consistency"`
	InclusionChecked     int    `json:"inclusion_checked"`
	ConsistencyChecked   int    `json:"consistency_checked"`
	ProofsMatched        int    `json:"proofs_matched"`
	TileTreeHash         bool   `json:"tile_tree_hash"`
	TileRecordProofs     int    `json:"tile_record_proofs"`
	TileTreeProofs       int    `json:"tile_tree_proofs"`
	EntriesChecked       int64  `json:"entries_checked"`
	BundlesRead          int    `json:"bundles_read"`
	TilesRead            int    `json:"tiles_read"`
	TileFallbacks        int    `json:"tile_fallbacks"`
}

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

type usage struct{ msg string }

func (u usage) Error() string { return u.msg }

func fail(format string, args ...interface{}) error {
	return failure{fmt.Sprintf(format, args...)}
}

func bad(format string, args ...interface{}) error {
	return usage{fmt.Sprintf(format, args...)}
}

func main() {
	res, err := run(os.Stdin)
	if err != nil {
		var u usage
		if errors.As(err, &u) {
			fmt.Fprintf(os.Stderr, "potdcheck: bad request: %s\n", u.msg)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "potdcheck: FAIL: %s\n", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "potdcheck: writing result: %v\n", err)
		os.Exit(2)
	}
}

// --- request decoding ------------------------------------------------------------

func decodeHash(s, what string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return h, bad("%s: not base64 std: %v", what, err)
	}
	if len(b) != tlog.HashSize {
		return h, bad("%s: %d bytes, want %d", what, len(b), tlog.HashSize)
	}
	copy(h[:], b)
	return h, nil
}

func decodeProof(p []string, what string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(p))
	for i, s := range p {
		h, err := decodeHash(s, fmt.Sprintf("%s hash #%d", what, i))
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func b64(h tlog.Hash) string { return base64.StdEncoding.EncodeToString(h[:]) }

func equalProofs(a, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// --- checkpoint --------------------------------------------------------------------

type checkpoint struct {
	origin     string
	size       int64
	root       tlog.Hash
	extensions []string
}

// parseCheckpoint parses a C2SP tlog-checkpoint body (the note text, ending in "\n").
func parseCheckpoint(text string) (checkpoint, error) {
	var cp checkpoint
	if !strings.HasSuffix(text, "\n") {
		return cp, fail("checkpoint body does not end with a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return cp, fail("checkpoint body has %d lines, want origin, size, root", len(lines))
	}
	cp.origin = lines[0]
	if cp.origin == "" {
		return cp, fail("checkpoint origin line is empty")
	}
	s := lines[1]
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return cp, fail("checkpoint size %q is not a decimal number without leading zeros", s)
	}
	size, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return cp, fail("checkpoint size %q: %v", s, err)
	}
	cp.size = size
	rb, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rb) != tlog.HashSize {
		return cp, fail("checkpoint root %q is not a base64 std 32-byte hash", lines[2])
	}
	copy(cp.root[:], rb)
	for _, e := range lines[3:] {
		if e == "" {
			return cp, fail("checkpoint has an empty extension line")
		}
		cp.extensions = append(cp.extensions, e)
	}
	return cp, nil
}

// --- tiles ---------------------------------------------------------------------------

// dirTileReader is a tlog.TileReader over a C2SP tlog-tiles directory.
type dirTileReader struct {
	dir       string
	cache     map[string][]byte // C2SP path -> file contents
	fallbacks int
	// sealed holds the hash tiles authenticated by authenticateTiles; once set,
	// ReadTiles serves nothing else.
	sealed map[tlog.Tile][]byte
}

func (r *dirTileReader) Height() int { return tileHeight }

// c2spPath maps Go's "tile/8/L/N[.p/W]" (or "tile/8/data/...") to "tile/L/N[.p/W]"
// (or "tile/entries/...").
func c2spPath(t tlog.Tile) (string, error) {
	p := t.Path()
	prefix := fmt.Sprintf("tile/%d/", tileHeight)
	if t.H != tileHeight || !strings.HasPrefix(p, prefix) {
		return "", fmt.Errorf("unexpected tile %s (height %d)", p, t.H)
	}
	rest := p[len(prefix):]
	if strings.HasPrefix(rest, "data/") {
		rest = "entries/" + rest[len("data/"):]
	}
	return "tile/" + rest, nil
}

func (r *dirTileReader) readFile(path string) ([]byte, error) {
	if b, ok := r.cache[path]; ok {
		return b, nil
	}
	b, err := os.ReadFile(filepath.Join(r.dir, filepath.FromSlash(path)))
	if err != nil {
		return nil, err
	}
	r.cache[path] = b
	return b, nil
}

// readTile returns the raw file for tile t: the exact file, else (for a partial tile)
// the full tile, else the narrowest wider partial. The caller truncates.
func (r *dirTileReader) readTile(t tlog.Tile) ([]byte, string, error) {
	path, err := c2spPath(t)
	if err != nil {
		return nil, "", err
	}
	b, err := r.readFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || t.W == 1<<tileHeight {
		return b, path, err
	}
	full := t
	full.W = 1 << tileHeight
	fullPath, _ := c2spPath(full)
	if b, err2 := r.readFile(fullPath); err2 == nil {
		r.fallbacks++
		return b, fullPath, nil
	}
	pdir := filepath.Join(r.dir, filepath.FromSlash(fullPath)+".p")
	ents, err2 := os.ReadDir(pdir)
	if err2 != nil {
		return nil, path, err
	}
	var widths []int
	for _, e := range ents {
		w, err3 := strconv.Atoi(e.Name())
		if err3 == nil && w > t.W && w < 1<<tileHeight && strconv.Itoa(w) == e.Name() {
			widths = append(widths, w)
		}
	}
	sort.Ints(widths)
	if len(widths) == 0 {
		return nil, path, err
	}
	wider := t
	wider.W = widths[0]
	widerPath, _ := c2spPath(wider)
	b, err = r.readFile(widerPath)
	if err != nil {
		return nil, widerPath, err
	}
	r.fallbacks++
	return b, widerPath, nil
}

func (r *dirTileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t.L < 0 {
			return nil, fmt.Errorf("ReadTiles asked for a data tile %s", t.Path())
		}
		if r.sealed != nil {
			b, ok := r.sealed[t]
			if !ok {
				return nil, fmt.Errorf("tile %s is outside the authenticated tile set", t.Path())
			}
			out[i] = b
			continue
		}
		b, path, err := r.readTile(t)
		if err != nil {
			return nil, fmt.Errorf("reading tile for %s: %v", t.Path(), err)
		}
		want := t.W * tlog.HashSize
		if exact, _ := c2spPath(t); path == exact && len(b) != want {
			return nil, fmt.Errorf("tile %s has %d bytes, want %d", path, len(b), want)
		}
		if len(b) < want {
			return nil, fmt.Errorf("tile %s has %d bytes, want at least %d", path, len(b), want)
		}
		if len(b)%tlog.HashSize != 0 || len(b) > (1<<tileHeight)*tlog.HashSize {
			return nil, fmt.Errorf("tile %s has %d bytes, not a whole tile", path, len(b))
		}
		out[i] = b[:want:want]
	}
	return out, nil
}

func (r *dirTileReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

// tilesForSize lists the hash tiles of a tree of n records, at the widths that
// tlog.TileHashReader(tlog.Tree{N: n, ...}) requests: full tiles, and at each level
// the partial right-edge tile.
func tilesForSize(n int64) []tlog.Tile {
	var out []tlog.Tile
	for L, count := 0, n; count > 0; L, count = L+1, count>>tileHeight {
		full := count >> tileHeight
		for i := int64(0); i < full; i++ {
			out = append(out, tlog.Tile{H: tileHeight, L: L, N: i, W: 1 << tileHeight})
		}
		if rem := int(count - full<<tileHeight); rem > 0 {
			out = append(out, tlog.Tile{H: tileHeight, L: L, N: full, W: rem})
		}
	}
	return out
}

// rowHash is the hash of the complete subtree whose bottom row is data (2**k hashes).
func rowHash(data []byte) tlog.Hash {
	if len(data) == tlog.HashSize {
		var h tlog.Hash
		copy(h[:], data)
		return h
	}
	half := len(data) / 2
	return tlog.NodeHash(rowHash(data[:half]), rowHash(data[half:]))
}

// authenticateTiles reads every hash tile of the tree (n, root) and authenticates all of
// them, then seals the reader so that only these bytes are ever served.
//
// Why not rely on tlog.TileHashReader alone: in golang.org/x/mod before v0.40.0 (Debian
// ships 0.7.0) its "authenticate full tiles against their parents" loop starts at index
// len(stx) of the tile list although the tree-hash tiles were deduplicated, so some
// fetched tiles are never checked (CVE-2026-56865, GO-2026-6179, go.dev/issue/80744).
// This check uses only tlog primitives: every full tile must hash (tlog.NodeHash) to its
// entry in its parent tile (tlog.HashFromTile), and tlog.TreeHash over the right-edge
// tiles must give the signed root; together these pin every byte of every tile.
func authenticateTiles(r *dirTileReader, n int64, root tlog.Hash) error {
	tiles := tilesForSize(n)
	data, err := r.ReadTiles(tiles)
	if err != nil {
		return fail("reading tiles: %v", err)
	}
	byCoord := map[[2]int64]int{}
	for i, t := range tiles {
		byCoord[[2]int64{int64(t.L), t.N}] = i
	}
	for i, t := range tiles {
		if t.W != 1<<tileHeight {
			continue
		}
		j, ok := byCoord[[2]int64{int64(t.L + 1), t.N >> tileHeight}]
		if !ok {
			return fail("bad math: no parent tile for %s in a tree of size %d", t.Path(), n)
		}
		want, err := tlog.HashFromTile(tiles[j], data[j], tlog.StoredHashIndex((t.L+1)*tileHeight, t.N))
		if err != nil {
			return fail("bad math: parent hash of %s: %v", t.Path(), err)
		}
		if rowHash(data[i]) != want {
			p, _ := c2spPath(t)
			pp, _ := c2spPath(tiles[j])
			return fail("tile %s is not authenticated: it does not hash to its entry in %s", p, pp)
		}
	}
	plain := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for k, x := range indexes {
			t := tlog.TileForIndex(tileHeight, x)
			j, ok := byCoord[[2]int64{int64(t.L), t.N}]
			if !ok {
				return nil, fmt.Errorf("no tile holds stored hash %d", x)
			}
			h, err := tlog.HashFromTile(tiles[j], data[j], x)
			if err != nil {
				return nil, err
			}
			out[k] = h
		}
		return out, nil
	})
	th, err := tlog.TreeHash(n, plain)
	if err != nil {
		return fail("computing the tree hash from tiles: %v", err)
	}
	if th != root {
		return fail("tiles are not authenticated: their tree hash %s for size %d is not the "+
			"checkpoint root %s", b64(th), n, b64(root))
	}
	r.sealed = map[tlog.Tile][]byte{}
	for i, t := range tiles {
		r.sealed[t] = data[i]
	}
	return nil
}

// readBundle returns the first w entries of entry bundle n.
func (r *dirTileReader) readBundle(n int64, w int) ([][]byte, error) {
	t := tlog.Tile{H: tileHeight, L: -1, N: n, W: w}
	b, path, err := r.readTile(t)
	if err != nil {
		p, _ := c2spPath(t)
		return nil, fmt.Errorf("reading entry bundle %s: %v", p, err)
	}
	var entries [][]byte
	for len(b) > 0 && len(entries) < w {
		if len(b) < 2 {
			return nil, fmt.Errorf("entry bundle %s: truncated length prefix", path)
		}
		l := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if len(b) < l {
			return nil, fmt.Errorf("entry bundle %s: entry #%d claims %d bytes, %d remain",
				path, len(entries), l, len(b))
		}
		entries = append(entries, b[:l])
		b = b[l:]
	}
	if len(entries) != w {
		return nil, fmt.Errorf("entry bundle %s holds %d entries, want %d", path, len(entries), w)
	}
	if exact, _ := c2spPath(t); path == exact && len(b) != 0 {
		return nil, fmt.Errorf("entry bundle %s has %d trailing bytes", path, len(b))
	}
	return entries, nil
}

// --- the checks ----------------------------------------------------------------------

func run(in io.Reader) (*result, error) {
	var req request
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, bad("request JSON: %v", err)
	}
	if req.Vkey == "" {
		return nil, bad("missing vkey")
	}
	if req.Sample == 0 {
		req.Sample = 2000
	}
	if req.Sample < 0 {
		return nil, bad("sample must be positive")
	}
	var tr *dirTileReader
	if req.TilesDir != "" {
		tr = &dirTileReader{dir: req.TilesDir, cache: map[string][]byte{}}
	}
	if req.Checkpoint == "" {
		if tr == nil {
			return nil, bad("need checkpoint or tiles_dir")
		}
		b, err := os.ReadFile(filepath.Join(req.TilesDir, "checkpoint"))
		if err != nil {
			return nil, fail("reading checkpoint from tiles_dir: %v", err)
		}
		req.Checkpoint = string(b)
	}

	// 1. checkpoint
	v, err := note.NewVerifier(req.Vkey)
	if err != nil {
		return nil, bad("vkey: %v", err)
	}
	n, err := note.Open([]byte(req.Checkpoint), note.VerifierList(v))
	if err != nil {
		return nil, fail("checkpoint signature: %v", err)
	}
	cp, err := parseCheckpoint(n.Text)
	if err != nil {
		return nil, err
	}
	origin := req.Origin
	if origin == "" {
		origin = v.Name()
	}
	if cp.origin != origin {
		return nil, fail("checkpoint origin %q, want %q", cp.origin, origin)
	}
	if cp.size == 0 && cp.root != tlog.Hash(sha256.Sum256(nil)) {
		return nil, fail("empty checkpoint root is %s, want SHA-256(\"\")", b64(cp.root))
	}
	res := &result{OK: true, Origin: cp.origin, Size: cp.size, Root: b64(cp.root),
		Signatures: len(n.Sigs)}

	// roots: size -> root; authenticated: size -> true once proven.
	roots := map[int64]tlog.Hash{cp.size: cp.root}
	authenticated := map[int64]bool{cp.size: true}
	var rootSizes []int64
	for k, s := range req.Roots {
		size, err := strconv.ParseInt(k, 10, 64)
		if err != nil || size < 0 || strconv.FormatInt(size, 10) != k {
			return nil, bad("roots: key %q is not a tree size", k)
		}
		h, err := decodeHash(s, "roots["+k+"]")
		if err != nil {
			return nil, err
		}
		if size > cp.size {
			return nil, fail("roots[%d]: size is beyond the checkpoint size %d", size, cp.size)
		}
		if size == cp.size && h != cp.root {
			return nil, fail("roots[%d] differs from the checkpoint root", size)
		}
		if size == 0 && h != tlog.Hash(sha256.Sum256(nil)) {
			return nil, fail("roots[0] is not the empty-tree root SHA-256(\"\")")
		}
		if size == 0 {
			authenticated[0] = true
		}
		roots[size] = h
		rootSizes = append(rootSizes, size)
	}
	sort.Slice(rootSizes, func(i, j int) bool { return rootSizes[i] < rootSizes[j] })

	// 2. tiles
	var hr tlog.HashReader
	if tr != nil && cp.size > 0 {
		if err := authenticateTiles(tr, cp.size, cp.root); err != nil {
			return nil, err
		}
		hr = tlog.TileHashReader(tlog.Tree{N: cp.size, Hash: cp.root}, tr)
		if err := checkTiles(res, tr, hr, cp, req.Sample); err != nil {
			return nil, err
		}
		for _, size := range rootSizes {
			if size == 0 || size == cp.size {
				continue
			}
			th, err := tlog.TreeHash(size, hr)
			if err != nil {
				return nil, fail("computing root of size %d from tiles: %v", size, err)
			}
			if th != roots[size] {
				return nil, fail("roots[%d] = %s, but the tiles give %s", size, b64(roots[size]), b64(th))
			}
			authenticated[size] = true
			res.RootsFromTiles++
		}
		for path := range tr.cache {
			if strings.HasPrefix(path, "tile/entries/") {
				res.BundlesRead++
			} else {
				res.TilesRead++
			}
		}
		res.TileFallbacks = tr.fallbacks
	}
	rootFor := func(size int64, what string) (tlog.Hash, error) {
		h, ok := roots[size]
		if !ok {
			return h, bad("%s: no root for size %d (add it to \"roots\")", what, size)
		}
		return h, nil
	}

	// 3. inclusion proofs
	for i, it := range req.Inclusion {
		what := fmt.Sprintf("inclusion[%d]", i)
		if it.Index == nil || it.Size == nil {
			return nil, bad("%s: index and size are required", what)
		}
		idx, size := *it.Index, *it.Size
		leaf, err := decodeHash(it.LeafHash, what+" leaf_hash")
		if err != nil {
			return nil, err
		}
		proof, err := decodeProof(it.Proof, what+" proof")
		if err != nil {
			return nil, err
		}
		root, err := rootFor(size, what)
		if err != nil {
			return nil, err
		}
		if err := tlog.CheckRecord(proof, size, root, idx, leaf); err != nil {
			return nil, fail("%s: record %d in tree size %d: %v", what, idx, size, err)
		}
		if hr != nil {
			gp, err := tlog.ProveRecord(size, idx, hr)
			if err != nil {
				return nil, fail("%s: tlog.ProveRecord(%d, %d) from tiles: %v", what, size, idx, err)
			}
			if !equalProofs(gp, proof) {
				return nil, fail("%s: proof differs from tlog.ProveRecord(%d, %d)", what, size, idx)
			}
			res.ProofsMatched++
		}
		res.InclusionChecked++
	}

	// 4. consistency proofs; a passing proof to an authenticated root authenticates the
	// older root, so iterate to a fixed point, then require every item to have passed.
	type citem struct {
		from, to int64
		proof    []tlog.Hash
		done     bool
	}
	var citems []*citem
	for i, it := range req.Consistency {
		what := fmt.Sprintf("consistency[%d]", i)
		if it.From == nil || it.To == nil {
			return nil, bad("%s: from and to are required", what)
		}
		proof, err := decodeProof(it.Proof, what+" proof")
		if err != nil {
			return nil, err
		}
		from, to := *it.From, *it.To
		if from < 0 || from > to {
			return nil, fail("%s: sizes %d -> %d go backwards", what, from, to)
		}
		if _, err := rootFor(to, what); err != nil {
			return nil, err
		}
		if from > 0 {
			if _, err := rootFor(from, what); err != nil {
				return nil, err
			}
		}
		citems = append(citems, &citem{from: from, to: to, proof: proof})
	}
	for i, c := range citems {
		what := fmt.Sprintf("consistency[%d]", i)
		if c.from == 0 {
			if len(c.proof) != 0 {
				return nil, fail("%s: a proof from the empty tree must be empty", what)
			}
			c.done = true
			res.ConsistencyChecked++
			continue
		}
		if err := tlog.CheckTree(c.proof, c.to, roots[c.to], c.from, roots[c.from]); err != nil {
			return nil, fail("%s: tree %d -> %d: %v", what, c.from, c.to, err)
		}
		if hr != nil {
			gp, err := tlog.ProveTree(c.to, c.from, hr)
			if err != nil {
				return nil, fail("%s: tlog.ProveTree(%d, %d) from tiles: %v", what, c.to, c.from, err)
			}
			if !equalProofs(gp, c.proof) {
				return nil, fail("%s: proof differs from tlog.ProveTree(%d, %d)", what, c.to, c.from)
			}
			res.ProofsMatched++
		}
		res.ConsistencyChecked++
	}
	for changed := true; changed; {
		changed = false
		for _, c := range citems {
			if !c.done && authenticated[c.to] {
				c.done = true
				if !authenticated[c.from] {
					authenticated[c.from] = true
					res.RootsFromConsistency++
					changed = true
				}
			}
		}
	}
	for _, size := range rootSizes {
		if !authenticated[size] {
			return nil, fail("roots[%d] is not authenticated: give tiles_dir, or a consistency "+
				"proof from it to the checkpoint (or to another authenticated root)", size)
		}
	}
	return res, nil
}

// checkTiles runs check 2 (a, c, d) against the authenticated tile hash reader.
func checkTiles(res *result, tr *dirTileReader, hr tlog.HashReader, cp checkpoint, sample int) error {
	N := cp.size
	th, err := tlog.TreeHash(N, hr)
	if err != nil {
		return fail("tlog.TreeHash(%d) from tiles: %v", N, err)
	}
	if th != cp.root {
		return fail("tiles give root %s for size %d, checkpoint says %s", b64(th), N, b64(cp.root))
	}
	res.TileTreeHash = true

	// Record proofs: all records, or a deterministic sample that keeps the ends and
	// the tile edges.
	var indexes []int64
	if N <= int64(sample) {
		for i := int64(0); i < N; i++ {
			indexes = append(indexes, i)
		}
	} else {
		set := map[int64]bool{}
		add := func(i int64) {
			if i >= 0 && i < N {
				set[i] = true
			}
		}
		for i := int64(0); i < 16; i++ {
			add(i)
			add(N - 1 - i)
		}
		for t := int64(1); t<<tileHeight <= N; t++ {
			add(t<<tileHeight - 1)
			add(t << tileHeight)
			if len(set) > sample/2 {
				break
			}
		}
		rng := rand.New(rand.NewSource(N))
		for len(set) < sample {
			add(rng.Int63n(N))
		}
		for i := range set {
			indexes = append(indexes, i)
		}
		sort.Slice(indexes, func(i, j int) bool { return indexes[i] < indexes[j] })
	}
	leafIdx := make([]int64, len(indexes))
	for i, x := range indexes {
		leafIdx[i] = tlog.StoredHashIndex(0, x)
	}
	leaves, err := hr.ReadHashes(leafIdx)
	if err != nil {
		return fail("reading leaf hashes from tiles: %v", err)
	}
	for i, x := range indexes {
		p, err := tlog.ProveRecord(N, x, hr)
		if err != nil {
			return fail("tlog.ProveRecord(%d, %d) from tiles: %v", N, x, err)
		}
		if err := tlog.CheckRecord(p, N, cp.root, x, leaves[i]); err != nil {
			return fail("tlog.CheckRecord of tile proof for record %d: %v", x, err)
		}
		res.TileRecordProofs++
	}

	// Tree proofs from several older sizes.
	sizes := map[int64]bool{1: true, N: true, N - 1: true, N / 2: true, (N + 1) / 2: true}
	for k := int64(1); k < N; k <<= 1 {
		sizes[k] = true
		sizes[k+1] = true
	}
	for k := int64(1); k<<tileHeight <= N; k <<= 1 {
		sizes[k<<tileHeight] = true
		sizes[k<<tileHeight+1] = true
	}
	for m := range sizes {
		if m < 1 || m > N {
			continue
		}
		old, err := tlog.TreeHash(m, hr)
		if err != nil {
			return fail("tlog.TreeHash(%d) from tiles: %v", m, err)
		}
		p, err := tlog.ProveTree(N, m, hr)
		if err != nil {
			return fail("tlog.ProveTree(%d, %d) from tiles: %v", N, m, err)
		}
		if err := tlog.CheckTree(p, N, cp.root, m, old); err != nil {
			return fail("tlog.CheckTree of tile proof %d -> %d: %v", m, N, err)
		}
		// And one record proof inside the older tree.
		x := m - 1
		lh, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, x)})
		if err != nil {
			return fail("reading leaf %d from tiles: %v", x, err)
		}
		rp, err := tlog.ProveRecord(m, x, hr)
		if err != nil {
			return fail("tlog.ProveRecord(%d, %d) from tiles: %v", m, x, err)
		}
		if err := tlog.CheckRecord(rp, m, old, x, lh[0]); err != nil {
			return fail("tlog.CheckRecord of tile proof for record %d in size %d: %v", x, m, err)
		}
		res.TileTreeProofs++
	}

	// Entry bundles against the authenticated level-0 hashes.
	for b := int64(0); b<<tileHeight < N; b++ {
		start := b << tileHeight
		w := N - start
		if w > 1<<tileHeight {
			w = 1 << tileHeight
		}
		entries, err := tr.readBundle(b, int(w))
		if err != nil {
			return fail("%v", err)
		}
		idx := make([]int64, w)
		for i := range idx {
			idx[i] = tlog.StoredHashIndex(0, start+int64(i))
		}
		hashes, err := hr.ReadHashes(idx)
		if err != nil {
			return fail("reading level-0 hashes %d..%d from tiles: %v", start, start+w-1, err)
		}
		for i, e := range entries {
			if tlog.RecordHash(e) != hashes[i] {
				return fail("entry %d in bundle %d: RecordHash %s does not match the tree's leaf hash %s",
					start+int64(i), b, b64(tlog.RecordHash(e)), b64(hashes[i]))
			}
			res.EntriesChecked++
		}
	}
	return nil
}
