"""Write a transformers Llama (the tiny random one of conftest.make_tiny_llama) as a GGUF
file with the `gguf` package, so that the llama.cpp engine runs the very same weights as
the transformers engine (no download, well under a second).

The vocabulary is a made-up SentencePiece-style one: <unk>, <s>, </s> at the model's EOS
id, then "▁", the lower-case letters and digits, "▁" + each letter, then fillers (text made
of spaces, lower-case letters and digits tokenises; llama.cpp aborts on other characters,
which would need byte tokens). q and k are permuted from transformers' half-split rotary layout to
llama.cpp's interleaved one, as llama.cpp's convert_hf_to_gguf.py does.
"""
import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path, *, context_length: int = 256) -> str:
    import gguf

    cfg = model.config
    V, H = cfg.vocab_size, cfg.hidden_size
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(context_length)
    w.add_embedding_length(H)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(H // n_head)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    eos = int(cfg.eos_token_id)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = iter(["\u2581", *letters, *"0123456789", *("\u2581" + c for c in letters)])
    tokens, types = [], []
    for i in range(V):
        if i in (0, 1, eos):
            tokens.append({0: "<unk>", 1: "<s>"}.get(i, "</s>"))
            types.append(gguf.TokenType.UNKNOWN if i == 0 else gguf.TokenType.CONTROL)
        else:
            tokens.append(next(words, f"<filler{i}>"))
            types.append(gguf.TokenType.NORMAL)
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(V)])
    w.add_token_types(types)
    w.add_bos_token_id(int(cfg.bos_token_id))
    w.add_eos_token_id(eos)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], n_head))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], n_kv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
