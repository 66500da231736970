"""Run under TRITON_INTERPRET=1 by tests/test_fused_ops.py: each fused kernel against the torch ops it replaces."""
import torch
import torch.nn.functional as F
from quantdeploy.engine import triton_ops as T
torch.manual_seed(0)
def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def check(what, err, tol):
    print(what, err)
    assert err <= tol, (what, err)

for dt in (torch.float32, torch.float16):
  for gemma in (False, True):
    N=640; eps=1e-6
    x=torch.randn(3,N).to(dt); r=torch.randn(3,N).to(dt); w=(torch.randn(N)*0.1+1).to(dt); rw=(torch.randn(N)*0.1).to(dt)
    def norm(x,w):
        xf=x.float(); xf=xf*torch.rsqrt(xf.pow(2).mean(-1,keepdim=True)+eps)
        return (xf*(1.0+w.float())).to(x.dtype) if gemma else w*xf.to(x.dtype)
    x1=x.clone(); y=T.add_rmsnorm(x1,w,eps,gemma)
    check((dt,gemma,'norm'),rel(y,norm(x,w)),1e-6)
    x1=x.clone(); y=T.add_rmsnorm(x1,w,eps,gemma,r); xr=x+r
    check((dt,gemma,'add'),rel(x1,xr),0); check((dt,gemma,'addnorm'),rel(y,norm(xr,w)),1e-6)
    x1=x.clone(); y=T.add_rmsnorm(x1,w,eps,gemma,r,rw); xr=x+norm(r,rw)
    check((dt,gemma,'addres'),rel(x1,xr),1e-6); check((dt,gemma,'addnormres'),rel(y,norm(xr,w)),1e-6)
  # rope cache
  H,KVH,D,M,L=8,2,64,3,32
  qkv=torch.randn(M,(H+2*KVH)*D).to(dt); pos=torch.tensor([5,9,2])
  inv=1.0/(10000**(torch.arange(0,D,2).float()/D)); fr=torch.outer(torch.arange(L).float(),inv); emb=torch.cat([fr,fr],-1)
  cos,sin=emb.cos().to(dt),emb.sin().to(dt)
  kc=torch.zeros(KVH,L,D,dtype=dt); vc=torch.zeros_like(kc)
  qn=(torch.randn(D)*0.1+1).to(dt); kn=(torch.randn(D)*0.1+1).to(dt)
  for qk in (False,True):
    kc.zero_(); vc.zero_()
    q=T.rope_cache(qkv,pos,cos,sin,kc,vc,H,KVH,1e-6,qn if qk else None,kn if qk else None,False)
    qq,k,v=qkv.split([H*D,KVH*D,KVH*D],-1); qq,k,v=qq.view(M,H,D),k.view(M,KVH,D),v.view(M,KVH,D)
    def nrm(x,w):
        xf=x.float(); xf=xf*torch.rsqrt(xf.pow(2).mean(-1,keepdim=True)+1e-6); return w*xf.to(x.dtype)
    if qk: qq,k=nrm(qq,qn),nrm(k,kn)
    c,s=cos[pos][:,None],sin[pos][:,None]
    def rot(x): h=x.shape[-1]//2; return x*c+torch.cat([-x[...,h:],x[...,:h]],-1)*s
    qq,k=rot(qq),rot(k)
    kr=torch.zeros_like(kc); vr=torch.zeros_like(vc); kr.index_copy_(1,pos,k.transpose(0,1)); vr.index_copy_(1,pos,v.transpose(0,1))
    check((dt,'rope',qk),max(rel(q,qq),rel(kc,kr),rel(vc,vr)),1e-6)
  # attention
  for (H,KVH,D,win) in ((32,8,128,0),(4,1,256,0),(4,1,256,7),(8,8,64,0)):
    L=300
    kc=torch.randn(KVH,L,D).to(dt); vc=torch.randn(KVH,L,D).to(dt); q=torch.randn(1,H,D).to(dt)
    for p in (0,100,255):
      pos=torch.tensor([p]); o=T.decode_attention(q,kc,vc,pos,256,D**-0.5,win)
      j=torch.arange(256); mask=(j<=p)&((j>p-win) if win else True)
      ref=F.scaled_dot_product_attention(q.transpose(0,1).unsqueeze(0).float(),kc[:,:256].unsqueeze(0).float(),vc[:,:256].unsqueeze(0).float(),attn_mask=mask[None,:],scale=D**-0.5,enable_gqa=KVH!=H)
      check((dt,'attn',H,KVH,D,win,p),rel(o,ref[0].transpose(0,1).reshape(1,-1)),1e-3)
  # paged: the same rope / attention through block tables (blocks deliberately out of order)
  H,KVH,D,BS,NB=8,2,64,16,12
  qkv=torch.randn(3,(H+2*KVH)*D).to(dt); pos=torch.tensor([5,17,40])
  tables=torch.tensor([[3,0,0],[7,1,0],[9,4,11]],dtype=torch.int32)
  slots=torch.tensor([int(tables[i,p//BS])*BS+p%BS for i,p in enumerate(pos.tolist())])
  kp=torch.zeros(NB,KVH,BS,D,dtype=dt); vp=torch.zeros_like(kp)
  inv=1.0/(10000**(torch.arange(0,D,2).float()/D)); fr=torch.outer(torch.arange(64).float(),inv); emb=torch.cat([fr,fr],-1)
  cos,sin=emb.cos().to(dt),emb.sin().to(dt)
  q=T.rope_cache(qkv,pos,cos,sin,kp,vp,H,KVH,1e-6,slots=slots)
  ks=torch.zeros(KVH,64,D,dtype=dt); vs=torch.zeros_like(ks)
  qs=T.rope_cache(qkv,pos,cos,sin,ks,vs,H,KVH,1e-6)
  for i,p in enumerate(pos.tolist()):
    b=int(tables[i,p//BS])
    check((dt,'paged-rope',i),max(rel(kp[b,:,p%BS],ks[:,p]),rel(vp[b,:,p%BS],vs[:,p])),0)
  check((dt,'paged-rope-q'),rel(q,qs),0)
  kp=torch.randn(NB,KVH,BS,D).to(dt); vp=torch.randn(NB,KVH,BS,D).to(dt); qb=torch.randn(3,H,D).to(dt)
  for win in (0,9):
    o=T.paged_decode_attention(qb,kp,vp,pos,tables,64,D**-0.5,win)
    for i,p in enumerate(pos.tolist()):
      kk=kp[tables[i].long()].transpose(0,1).reshape(KVH,-1,D)[:,:p+1]; vv=vp[tables[i].long()].transpose(0,1).reshape(KVH,-1,D)[:,:p+1]
      j=torch.arange(p+1); mask=(j<=p)&((j>p-win) if win else True)
      ref=F.scaled_dot_product_attention(qb[i:i+1].transpose(0,1).unsqueeze(0).float(),kk.unsqueeze(0).float(),vv.unsqueeze(0).float(),attn_mask=mask[None,:],scale=D**-0.5,enable_gqa=True)
      check((dt,'paged-attn',win,i),rel(o[i:i+1],ref[0].transpose(0,1).reshape(1,-1)),1e-3)
  gu=torch.randn(2,2*300).to(dt)
  for gelu in (False,True):
    g,u=gu.chunk(2,-1); a=F.gelu(g,approximate='tanh') if gelu else F.silu(g)
    check((dt,'act',gelu),rel(T.act_mul(gu,gelu),a*u),1e-6)
print("ok")
