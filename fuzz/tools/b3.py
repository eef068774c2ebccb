# Minimal pure-Python BLAKE3 (hash mode) for making small .bnet fuzz seeds without a Rust build.
# blake3(data)[:32] is the 32-byte hash. Checked against the official test vectors.
IV = [0x6A09E667,0xBB67AE85,0x3C6EF372,0xA54FF53A,0x510E527F,0x9B05688C,0x1F83D9AB,0x5BE0CD19]
PERM = [2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8]
CHUNK_START,CHUNK_END,PARENT,ROOT = 1,2,4,8
M = 0xffffffff
def rotr(x,n): return ((x>>n)|(x<<(32-n)))&M
def g(s,a,b,c,d,x,y):
    s[a]=(s[a]+s[b]+x)&M; s[d]=rotr(s[d]^s[a],16)
    s[c]=(s[c]+s[d])&M; s[b]=rotr(s[b]^s[c],12)
    s[a]=(s[a]+s[b]+y)&M; s[d]=rotr(s[d]^s[a],8)
    s[c]=(s[c]+s[d])&M; s[b]=rotr(s[b]^s[c],7)
def compress(cv,block,counter,blen,flags):
    m=[int.from_bytes(block[4*i:4*i+4],'little') for i in range(16)]
    s=list(cv)+IV[:4]+[counter&M,(counter>>32)&M,blen,flags]
    for r in range(7):
        g(s,0,4,8,12,m[0],m[1]); g(s,1,5,9,13,m[2],m[3]); g(s,2,6,10,14,m[4],m[5]); g(s,3,7,11,15,m[6],m[7])
        g(s,0,5,10,15,m[8],m[9]); g(s,1,6,11,12,m[10],m[11]); g(s,2,7,8,13,m[12],m[13]); g(s,3,4,9,14,m[14],m[15])
        if r<6: m=[m[p] for p in PERM]
    return [s[i]^s[i+8] for i in range(8)]+[s[i+8]^cv[i] for i in range(8)]
def chunk_out(data,counter):
    # returns (cv_in, block, counter, blen, flags) of the last block, unfinalized
    cv=IV; blocks=[data[i:i+64] for i in range(0,max(len(data),1),64)] or [b'']
    for i,b in enumerate(blocks):
        fl=(CHUNK_START if i==0 else 0)
        if i==len(blocks)-1: return (cv,b.ljust(64,b'\0'),counter,len(b),fl|CHUNK_END)
        cv=compress(cv,b,counter,64,fl)[:8]
def out_cv(o,extra=0): return compress(o[0],o[1],o[2],o[3],o[4]|extra)[:8]
def parent(l,r): return (IV,b''.join(x.to_bytes(4,'little') for x in l+r),0,64,PARENT)
def blake3(data):
    chunks=[data[i:i+1024] for i in range(0,len(data),1024)] or [b'']
    outs=[chunk_out(c,i) for i,c in enumerate(chunks)]
    def tree(os):
        if len(os)==1: return os[0]
        # left subtree: largest power of two chunks < n
        n=len(os); p=1
        while p*2<n: p*=2
        return parent(out_cv(tree(os[:p])),out_cv(tree(os[p:])))
    root=tree(outs)
    w=compress(root[0],root[1],root[2],root[3],root[4]|ROOT)
    return b''.join(x.to_bytes(4,'little') for x in w)
if __name__=='__main__':
    print(blake3(b'').hex())  # af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
    print(blake3(b'abc').hex())  # 6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85
