"""Hand gomod:// SRC_URI entries to BitBake's own gomod fetcher.

usage: python3 bbgomod.py BITBAKE_LIB INC ROOT FILES_JSON

For each gomod:// entry in INC, BitBake (lib at BITBAKE_LIB) parses the URL,
the file FILES_JSON names for "module@version" is put where the fetcher
would have downloaded it, the fetcher's checksum verification runs
(BB_STRICT_CHECKSUM), and the fetcher unpacks it into ROOT (its module
cache is ROOT/pkg/mod). Prints one line per entry; exits non-zero on the
first failure. Used by TestBitbakeGomodFetcher.
"""
import json
import os
import re
import shutil
import sys

bblib, inc, root, files_json = sys.argv[1:5]
sys.path.insert(0, bblib)
import bb.data  # noqa: E402
import bb.fetch2  # noqa: E402
from bb.fetch2.gomod import GoMod  # noqa: E402


class NoTracer:
    def unpack(self, *args):
        pass


files = json.load(open(files_json))
uris = re.findall(r'gomod://\S+', open(inc).read())
d = bb.data.init()
d.setVar('DL_DIR', os.path.join(root, 'dl'))
d.setVar('GO_MOD_CACHE_DIR', 'pkg/mod')
d.setVar('PATH', os.environ['PATH'])
d.setVar('BB_STRICT_CHECKSUM', '1')
os.makedirs(d.getVar('DL_DIR'), exist_ok=True)
fetcher = GoMod()
for uri in uris:
    ud = bb.fetch2.FetchData(uri, d)
    key = ud.parm['module'] + '@' + ud.parm['version']
    shutil.copy(files[key], ud.localpath)
    bb.fetch2.verify_checksum(ud, d, localpath=ud.localpath)
    ud.unpack_tracer = NoTracer()
    fetcher.unpack(ud, root, d)
    print('fetched', ud.url, 'as', os.path.basename(ud.localpath))
print(len(uris), 'entries')
