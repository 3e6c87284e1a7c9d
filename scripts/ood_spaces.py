"""How the out-of-distribution score's choices compare on the bundled data (README, "Out of
distribution first"): the embedding alone (the model's 32-d embedding, whitened, as
src/relabel/ood.rs), the 8x8 gray descriptor in four normalizations (raw, centred, centred and
unit norm = what src/image_stats.rs computes, unit norm), plain or whitened, and the two combined
by mean or max, each over its own reference leave-one-out 0.99 quantile ("recal": the combined
score over its own quantile). Prints the share flagged of data/traffic/normal, data/traffic/ood
(each kind) and data/traffic/photos (not tuned on). Independent of the Rust code: numpy, Pillow
and onnxruntime.

usage: .venv/bin/python scripts/ood_spaces.py   (from the repository root)
"""
import os, json, numpy as np, onnxruntime as ort
from PIL import Image
R=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def files(d): return sorted(os.path.join(R,d,f) for f in os.listdir(os.path.join(R,d)) if f.endswith('.png'))
def area(src,dst):
    w=np.zeros((dst,src)); r=src/dst
    for o in range(dst):
        lo,hi=o*r,min((o+1)*r,src)
        for i in range(int(np.floor(lo)),min(int(np.ceil(hi)),src)):
            w[o,i]=max(0,min(hi,i+1)-max(lo,i))/(hi-lo)
    return w
def gray(p):
    im=Image.open(p).convert('L'); g=np.asarray(im,dtype=np.float64); return g
def thumb(g,W=8,H=8): return area(g.shape[0],H)@g@area(g.shape[1],W).T
sess=ort.InferenceSession(R+'/models/digits.onnx')
def emb(ps):
    x=np.stack([thumb(gray(p))/240.0 for p in ps]).astype(np.float32)[:,None]
    return sess.run(['embedding'],{'image':x})[0].astype(np.float64)
sets={k:files('data/traffic/'+k) for k in ['normal','ood','photos']}
ref=files('data/reference')
prof=json.load(open(R+'/models/digits.reference.json'))
E_ref=np.array(prof['embeddings'],dtype=np.float64)
E_ref2=emb(ref); print('emb match', np.abs(E_ref-E_ref2).max())
def whit(X,lam=0.1):
    m=X.mean(0); S=np.cov(X,rowvar=False); d=X.shape[1]; S=(1-lam)*S+lam*np.trace(S)/d*np.eye(d); L=np.linalg.cholesky(S)
    return lambda Y: np.linalg.solve(L,(Y-m).T).T
def nn(Q,Rf,loo=False):
    D=np.sqrt(((Q[:,None,:]-Rf[None])**2).sum(-1))
    if loo: np.fill_diagonal(D,np.inf)
    return D.min(1)
def detector(Rf,q=0.99,white=True):
    f=whit(Rf) if white else (lambda Y:Y)
    W=f(Rf); loo=nn(W,W,True); rad=np.quantile(loo,q)
    return (lambda Y: nn(f(Y),W)/rad), loo/rad
kinds=['noise']*40+['sparse']*40+['pattern']*40+['shape']*40+['letter']*40
def desc(ps,mode):
    T=np.stack([thumb(gray(p)).ravel()/255 for p in ps])
    if mode=='raw': return T
    if mode=='center': return T-T.mean(1,keepdims=True)
    if mode=='unit':
        C=T-T.mean(1,keepdims=True); n=np.linalg.norm(C,axis=1,keepdims=True); return C/np.maximum(n,1e-3)
    if mode=='l2': n=np.linalg.norm(T,axis=1,keepdims=True); return T/np.maximum(n,1e-3)
emb_score,emb_loo=detector(E_ref)
ES={k:emb_score(emb(v)) for k,v in sets.items()}
def report(name,S):
    ood=S['ood']>1; k=np.array(kinds)
    per=' '.join(f"{kk}:{ood[k==kk].mean():.3f}" for kk in ['noise','sparse','pattern','shape','letter'])
    print(f"{name:28s} normal {np.mean(S['normal']>1):.4f} ({(S['normal']>1).sum()}) ood {ood.mean():.4f} ({ood.sum()}) photos {np.mean(S['photos']>1):.3f} | {per}")
report('embedding',ES)
for mode in ['raw','center','unit','l2']:
  for white in [False,True]:
    DR=desc(ref,mode); dsc,dloo=detector(DR,white=white)
    DS={k:dsc(desc(v,mode)) for k,v in sets.items()}
    report(f'desc {mode} w={white}',DS)
    report(f'  mean',{k:(ES[k]+DS[k])/2 for k in sets})
    report(f'  max',{k:np.maximum(ES[k],DS[k]) for k in sets})
    # recalibrated mean
    c=np.quantile((emb_loo+dloo)/2,0.99)
    report(f'  mean recal',{k:(ES[k]+DS[k])/2/c for k in sets})
    c=np.quantile(np.maximum(emb_loo,dloo),0.99)
    report(f'  max recal',{k:np.maximum(ES[k],DS[k])/c for k in sets})
